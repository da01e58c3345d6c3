"""VIPL's values (vipl.h, VIA 1.0), kept under their C names and grouped in enum classes."""

from __future__ import annotations

import enum


class VipReturn(enum.IntEnum):
    SUCCESS = 0
    NOT_DONE = 1
    INVALID_PARAMETER = 2
    ERROR_RESOURCE = 3
    TIMEOUT = 4
    REJECT = 5
    INVALID_RELIABILITY_LEVEL = 6
    INVALID_MTU = 7
    INVALID_QOS = 8
    INVALID_PTAG = 9
    INVALID_RDMAREAD = 10
    DESCRIPTOR_ERROR = 11
    INVALID_STATE = 12
    ERROR_NAMESERVICE = 13
    NO_MATCH = 14
    NOT_REACHABLE = 15
    ERROR_NOT_SUPPORTED = 16


class ViState(enum.IntEnum):
    IDLE = 0
    CONNECTED = 1
    CONNECT_PENDING = 2
    ERROR = 3


class Reliability(enum.IntEnum):
    UNRELIABLE = 1
    RELIABLE_DELIVERY = 2
    RELIABLE_RECEPTION = 4


class Control(enum.IntFlag):
    OP_SENDRECV = 0
    OP_RDMAWRITE = 1
    OP_RDMAREAD = 2
    OP_MASK = 3
    IMMEDIATE = 4
    QFENCE = 8


class Status(enum.IntFlag):
    DONE = 1
    FORMAT_ERROR = 2
    PROTECTION_ERROR = 4
    LENGTH_ERROR = 8
    PARTIAL_ERROR = 0x10
    DESC_FLUSHED_ERROR = 0x20
    TRANSPORT_ERROR = 0x40
    RDMA_PROT_ERROR = 0x80
    REMOTE_DESC_ERROR = 0x100
    ERROR_MASK = 0x1FE
    OP_SEND = 0x0000
    OP_RECEIVE = 0x10000
    OP_RDMA_WRITE = 0x20000
    OP_REMOTE_RDMA_WRITE = 0x30000
    OP_RDMA_READ = 0x40000
    OP_MASK = 0x70000
    IMMEDIATE = 0x80000


# The C names, at module level, so code written from the VIPL manual reads the same.
# (__members__, not iteration: an IntFlag iterates only its single-bit members.)
_C_NAMES = {
    f"VIP_{prefix}{name}": member
    for prefix, enum_cls in (("", VipReturn), ("STATE_", ViState), ("SERVICE_", Reliability),
                             ("CONTROL_", Control), ("STATUS_", Status))
    for name, member in enum_cls.__members__.items()
}
globals().update({k: int(v) for k, v in _C_NAMES.items()})
__all__ = ["Control", "Reliability", "Status", "VipReturn", "ViState"] + list(_C_NAMES)
