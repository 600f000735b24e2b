"""The gridledger node process (to be built).

Configuration, peer transport (aiohttp websockets over mutually authenticated TLS),
mempool, block pipeline, the HTTP API, observer mode and catch-up. The only place
that owns sockets, clocks and disks for consensus.
"""
