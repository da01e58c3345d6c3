"""What `hsp-failover-test` needs besides the node engine: the ledger workload (ledger.py) and
the application that runs it on the active (app.py), the driver's log of acknowledged
transfers (acklog.py), scenario files (scenario.py) and the interface a drill runner
implements, with the checks that judge its result (runner.py)."""
