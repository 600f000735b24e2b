"""The ``gridledger`` command line: keys, genesis, node, devnet, demo, tx, query, meter."""
