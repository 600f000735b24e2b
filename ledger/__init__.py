"""gridledger's ledger core: what every other package stands on.

Canonical encoding (:mod:`ledger.codec`), Ed25519 identities and addresses
(:mod:`ledger.crypto`), encrypted key files (:mod:`ledger.keystore`), BLS aggregate
signatures (:mod:`ledger.bls`), validator sets and certificates, transactions and
blocks, the LMDB store with its authenticated state tree, and the client SDK.

``ledger`` imports nothing else of the project.
"""
