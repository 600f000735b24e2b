"""Serving hand-over bundles: how relayers teach neighbours this shard's validator-set changes.

::

    GET /v1/shards/handover/{epoch}
    -> 200 {"shard", "epoch", "height", "bundle_hex"}

``bundle_hex`` is the canonical encoding of the bundle (``shards.relayer.encode_handover``:
``[version, epoch, header, certificate, [schedule proof...]]``) that
``node.handover.HandoverKeeper`` kept when the epoch's hand-over height was this node's
head; ``height`` is its header's height. A relayer verifies it with the destination's
light client before delivering it, so nothing here needs to be trusted.

Errors follow the API (``{"error": {"code", "message"}}``): ``malformed`` for an epoch
that is not a decimal integer, ``bad_request`` for one below 1 or too large,
``not_found`` when this node keeps no bundle of that epoch, and the message says why:
the shard has no topology (no neighbours, no bundles), the epoch is not recorded yet,
its hand-over height is not committed yet, or this node was not following the chain at
that height (ask another node of the shard).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from node.api_json import ApiError, api_error, json_response, malformed, parse_int
from shards.relayer import encode_handover

__all__ = ["MAX_EPOCH", "register"]

MAX_EPOCH = (1 << 32) - 1


def register(app: web.Application, node: Any) -> None:
    """Add ``GET /v1/shards/handover/{epoch}`` to ``app`` (before it starts).

    ``node`` gives ``chain_id`` and ``handovers``: the node's
    :class:`node.handover.HandoverKeeper`, or None when its shard has no topology.
    The keeper is read at each request, so it may be attached after the routes.
    """

    async def get_handover(request: web.Request) -> web.Response:
        try:
            text = request.match_info["epoch"]
            if not text.isdigit():
                raise malformed(f"the epoch is a decimal integer from 1 to {MAX_EPOCH}, got {text[:40]!r}")
            epoch = parse_int(text, "epoch", 1, MAX_EPOCH)
            keeper = getattr(node, "handovers", None)
            if keeper is None:
                raise api_error("not_found", f"shard {node.chain_id} has no topology, so no neighbour follows it and "
                                             "it keeps no hand-over bundles")
            bundle = keeper.get(epoch)
            if bundle is None:
                raise api_error("not_found", f"no hand-over bundle of epoch {epoch} here: {keeper.why_missing(epoch)}")
            return json_response({
                "shard": node.chain_id,
                "epoch": epoch,
                "height": bundle.header.height,
                "bundle_hex": encode_handover(bundle).hex(),
            })
        except ApiError as exc:
            # Answered here, so the route behaves the same inside the node's API server
            # (whose guard also does this) and in any other application.
            return json_response(exc.body(), exc.status)

    app.router.add_route("GET", "/v1/shards/handover/{epoch}", get_handover, name="get_handover")
