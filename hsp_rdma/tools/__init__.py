"""The tools layer: what drives a pair from outside (benches, the demo, drills).

It may import the lab, the engine and the bindings; nothing below it imports it. The CLIs in
``hsp_rdma.cli`` sit on top and only parse, display and exit.
"""
