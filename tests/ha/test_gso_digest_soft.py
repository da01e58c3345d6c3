"""The image digest off the GSO's critical path, over the soft provider on this host: in pull
mode the standby digests each chunk as its read lands, so its verify only compares against
the digest the active took while it read (Digest); the default digest of the soft profile is
CRC32C."""

from __future__ import annotations

import argparse

from hsp_rdma.core.profiles import PACKAGED_PROFILE_DIR, load_profiles, pick_profile
from hsp_rdma.tools import soft_bench
from hsp_rdma.via.providers import soft


def test_pull_over_soft_digests_as_the_reads_land(monkeypatch):
    assert pick_profile("soft:a", load_profiles(PACKAGED_PROFILE_DIR)).digest == "crc32c"
    monkeypatch.setenv("HSP_VIA_SOFT_PORT_BASE", str(soft.random_port_base()))
    # 4 MiB in 1 MiB chunks: several reads, each digested after it completed
    args = argparse.Namespace(size=4 << 20, runs=2, chunk=0, depth=0, profiles=None,
                              mode="pull", lat_iters=50)
    [r] = soft_bench.bench_gso_soft(args)
    assert r["mode"] == "pull" and len(r["per_run"]) == 2  # both pulls verified and resumed
    assert r["standby_digest_ms"] and r["standby_digest_ms"]["p50"] > 0
    assert r["digest_ms"]["p50"] > 0  # the active's digest, taken while the standby reads
