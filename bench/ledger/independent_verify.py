#!/usr/bin/env python3
"""Verify a gavel ledger export without any gavel code.

Needs only the Python standard library and `cryptography` (for Ed25519):

    independent_verify.py records.jsonl checkpoints.jsonl PUBKEY [proof.json]

records.jsonl     every record in index order, one canonical record per line
                  (`gavel audit export` with no filter)
checkpoints.jsonl {"seq", "size", "note"} per line (the signed checkpoints)
PUBKEY            the verifier key, e.g. gavel.example/ledger+d7ec60df+AT...
proof.json        optional `gavel audit prove` output to check on its own

Recomputes every leaf hash (SHA-256(0x00 || line)) and the RFC 6962 tree,
checks every checkpoint's Ed25519 signature (C2SP signed note), that
sequence numbers run 1, 2, 3, ... and that each checkpoint's root is the root
of the records before it. Exits 1 naming the first problem.
"""
import base64
import hashlib
import json
import sys

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey


def leaf_hash(data):
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left, right):
    return hashlib.sha256(b"\x01" + left + right).digest()


def parse_verifier_key(text):
    name, key_id, key_b64 = text.strip().split("+", 2)
    raw = base64.b64decode(key_b64)
    if len(raw) != 33 or raw[0] != 1:
        raise ValueError("not an Ed25519 signed-note verifier key")
    key_hash = hashlib.sha256(name.encode() + b"\n" + raw).digest()[:4]
    if key_hash.hex() != key_id:
        raise ValueError("key id does not match key")
    return name, key_hash, Ed25519PublicKey.from_public_bytes(raw[1:])


def open_note(note, key):
    """Returns the note text if it carries a valid signature by key."""
    name, key_hash, public = key
    split = note.rindex("\n\n")
    text, signatures = note[: split + 1], note[split + 2 :]
    for line in signatures.splitlines():
        _dash, signer, sig_b64 = line.split(" ")
        blob = base64.b64decode(sig_b64)
        if signer == name and blob[:4] == key_hash:
            public.verify(blob[4:], text.encode())  # raises InvalidSignature
            return text
    raise ValueError("no signature by the expected key")


def parse_checkpoint(text):
    lines = text.rstrip("\n").split("\n")
    origin, size, root = lines[0], int(lines[1]), base64.b64decode(lines[2])
    ext = dict(line.split(" ", 1) for line in lines[3:])
    return origin, size, root, int(ext["gavel-seq"])


class CompactRange:
    """Roots of complete subtrees: enough to get the root at any size."""

    def __init__(self):
        self.size, self.peaks = 0, []

    def push(self, h):
        merges, size = 0, self.size
        while size & 1:
            merges, size = merges + 1, size >> 1
        for _ in range(merges):
            h = node_hash(self.peaks.pop(), h)
        self.peaks.append(h)
        self.size += 1

    def root(self):
        if not self.peaks:
            return hashlib.sha256(b"").digest()
        acc = self.peaks[-1]
        for left in reversed(self.peaks[:-1]):
            acc = node_hash(left, acc)
        return acc


def verify_inclusion(leaf, index, size, proof, root):
    """RFC 9162 section 2.1.3.2."""
    if index >= size:
        return False
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and r == root


def fail(msg):
    print(f"FAIL: {msg}")
    sys.exit(1)


def main():
    records_path, checkpoints_path, pubkey = sys.argv[1:4]
    key = parse_verifier_key(pubkey)
    checkpoints = []
    with open(checkpoints_path) as f:
        for i, line in enumerate(f):
            stored = json.loads(line)
            try:
                origin, size, root, seq = parse_checkpoint(open_note(stored["note"], key))
            except Exception as e:  # noqa: BLE001 - any failure is a bad checkpoint
                fail(f"checkpoint line {i + 1}: {e!r}")
            if origin != key[0] or seq != i + 1:
                fail(f"checkpoint line {i + 1}: origin {origin!r} seq {seq}")
            if checkpoints and size < checkpoints[-1][0]:
                fail(f"checkpoint {seq} shrinks the tree")
            checkpoints.append((size, root, seq))
    tree, pending = CompactRange(), list(checkpoints)
    good = 0

    def check_due():
        nonlocal good
        while pending and pending[0][0] == tree.size:
            size, root, seq = pending.pop(0)
            if tree.root() != root:
                fail(f"records {good}..{size} do not match the root signed by checkpoint {seq}")
            good = size

    check_due()
    with open(records_path, "rb") as f:
        for line in f:
            tree.push(leaf_hash(line.rstrip(b"\n")))
            check_due()
    if pending:
        fail(f"checkpoint {pending[0][2]} signs {pending[0][0]} records, only {tree.size} exported")
    print(f"OK: {tree.size} records, {len(checkpoints)} checkpoints, {tree.size - good} after the newest checkpoint")

    if len(sys.argv) > 4:
        with open(sys.argv[4]) as f:
            bundle = json.load(f)
        _origin, size, root, _seq = parse_checkpoint(open_note(bundle["checkpoint"], key))
        proof = [base64.b64decode(h) for h in bundle["proof"]]
        leaf = leaf_hash(bundle["record"].encode())
        if size != bundle["tree_size"] or not verify_inclusion(leaf, bundle["index"], size, proof, root):
            fail("inclusion proof does not verify")
        print(f"OK: proof of record {bundle['index']} in the signed tree of {size}")


if __name__ == "__main__":
    main()
