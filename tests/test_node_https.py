"""The public API over HTTPS with the node's own certificate, which clients pin."""

import ssl
import urllib.error
import urllib.request

import pytest

from cli.devnet import Devnet
from ledger.crypto import PrivateKey
from ledger.keystore import load_key
from node.tls import make_node_certificate


@pytest.mark.slow
def test_api_serves_https_with_the_pinned_node_certificate(tmp_path):
    net = Devnet.create(tmp_path / "net", validators=1, observers=0, market=False)
    node = net.validators()[0]
    config = net.node_dir(node) / "node.toml"
    config.write_text(config.read_text().replace("[api]\n", "[api]\ntls = true\n"))
    key = PrivateKey(load_key(net.root / "keys" / f"{node.name}.json", None, allow_plaintext=True).secret[:32])
    cert_pem, _ = make_node_certificate(key, node.name)
    pinned = ssl.create_default_context(cadata=cert_pem.decode())
    pinned.check_hostname = False  # trust comes from the pinned certificate, not a name
    net.start()
    try:
        url = f"https://127.0.0.1:{node.api_port}/healthz"
        for _ in range(150):
            try:
                with urllib.request.urlopen(url, context=pinned, timeout=2) as resp:
                    assert resp.status == 200
                    break
            except (urllib.error.URLError, ConnectionError):
                import time

                time.sleep(0.2)
        else:
            pytest.fail("the node never answered over HTTPS")
        # A client that trusts the system store, not the node's key, refuses the certificate.
        with pytest.raises(urllib.error.URLError):
            urllib.request.urlopen(url, context=ssl.create_default_context(), timeout=2)
        # Plain HTTP is not served on that port.
        with pytest.raises((urllib.error.URLError, ConnectionError)):
            urllib.request.urlopen(f"http://127.0.0.1:{node.api_port}/healthz", timeout=2)
    finally:
        net.stop()
