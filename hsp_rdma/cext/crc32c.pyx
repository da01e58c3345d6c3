# cython: boundscheck=False, wraparound=False
"""CRC32C (Castagnoli) in C: SSE4.2 ``crc32`` instructions when the CPU has them, slice-by-8 tables
otherwise. Same value as the pure-Python reference in ``hsp_rdma.core.frames``; buffers of 16 KiB
and more are summed without the GIL, so another thread (the node's loop) keeps running.
"""

from libc.stdint cimport uint8_t, uint32_t

cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    #if defined(__x86_64__) || defined(__i386__)
    #include <nmmintrin.h>
    #define HSP_X86 1
    #endif

    static uint32_t hsp_crc_table[8][256];
    static int hsp_crc_hw = 0;

    static void hsp_crc_init(void) {
        for (uint32_t n = 0; n < 256; n++) {
            uint32_t crc = n;
            for (int k = 0; k < 8; k++)
                crc = (crc & 1) ? (crc >> 1) ^ 0x82F63B78u : crc >> 1;
            hsp_crc_table[0][n] = crc;
        }
        for (uint32_t n = 0; n < 256; n++) {
            uint32_t crc = hsp_crc_table[0][n];
            for (int k = 1; k < 8; k++) {
                crc = hsp_crc_table[0][crc & 0xff] ^ (crc >> 8);
                hsp_crc_table[k][n] = crc;
            }
        }
    #ifdef HSP_X86
        __builtin_cpu_init();
        hsp_crc_hw = __builtin_cpu_supports("sse4.2");
    #endif
    }

    static uint32_t hsp_crc_sw(uint32_t crc, const uint8_t *p, size_t n) {
        while (n && ((uintptr_t)p & 7)) {
            crc = hsp_crc_table[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
            n--;
        }
        while (n >= 8) {
            uint64_t w;
            memcpy(&w, p, 8);
            /* little-endian hosts only: x86 and the arm64 we may meet; big-endian falls to bytes */
    #if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
            uint32_t lo = (uint32_t)w ^ crc, hi = (uint32_t)(w >> 32);
            crc = hsp_crc_table[7][lo & 0xff] ^ hsp_crc_table[6][(lo >> 8) & 0xff] ^
                  hsp_crc_table[5][(lo >> 16) & 0xff] ^ hsp_crc_table[4][lo >> 24] ^
                  hsp_crc_table[3][hi & 0xff] ^ hsp_crc_table[2][(hi >> 8) & 0xff] ^
                  hsp_crc_table[1][(hi >> 16) & 0xff] ^ hsp_crc_table[0][hi >> 24];
            p += 8;
            n -= 8;
    #else
            break;
    #endif
        }
        while (n--)
            crc = hsp_crc_table[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
        return crc;
    }

    #ifdef HSP_X86
    __attribute__((target("sse4.2")))
    static uint32_t hsp_crc_hw_run(uint32_t crc, const uint8_t *p, size_t n) {
        while (n && ((uintptr_t)p & 7)) {
            crc = _mm_crc32_u8(crc, *p++);
            n--;
        }
    #ifdef __x86_64__
        uint64_t c64 = crc;
        while (n >= 8) {
            uint64_t w;
            memcpy(&w, p, 8);
            c64 = _mm_crc32_u64(c64, w);
            p += 8;
            n -= 8;
        }
        crc = (uint32_t)c64;
    #endif
        while (n--)
            crc = _mm_crc32_u8(crc, *p++);
        return crc;
    }
    #endif

    static uint32_t hsp_crc32c(uint32_t crc, const uint8_t *p, size_t n, int use_hw) {
        crc = ~crc;
    #ifdef HSP_X86
        if (use_hw && hsp_crc_hw)
            return ~hsp_crc_hw_run(crc, p, n);
    #endif
        return ~hsp_crc_sw(crc, p, n);
    }
    """
    void hsp_crc_init()
    int hsp_crc_hw
    uint32_t hsp_crc32c(uint32_t crc, const uint8_t *p, size_t n, int use_hw) nogil

hsp_crc_init()

HARDWARE = bool(hsp_crc_hw)  # True: the CPU's SSE4.2 crc32 instruction does the work
_NOGIL_BYTES = 16384  # below this, dropping and retaking the GIL costs more than it saves


def crc32c(data, unsigned int crc=0, bint hardware=True):
    """CRC32C of ``data`` (any contiguous buffer), continuing from ``crc``.

    ``hardware=False`` forces the slice-by-8 table path (for tests on a CPU with SSE4.2).
    """
    cdef const uint8_t[::1] view
    cdef size_t n
    cdef uint32_t c = crc
    if isinstance(data, memoryview) and not data.c_contiguous:
        data = data.tobytes()
    view = memoryview(data).cast("B") if not isinstance(data, (bytes, bytearray)) else data
    n = view.shape[0]
    if n == 0:
        return c
    if n >= _NOGIL_BYTES:
        with nogil:
            c = hsp_crc32c(c, &view[0], n, hardware)
    else:
        c = hsp_crc32c(c, &view[0], n, hardware)
    return c
