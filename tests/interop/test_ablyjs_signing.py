"""Our signer against real ably-js ``createTokenRequest``, byte for byte.

Hundreds of generated cases (non-ASCII and astral-plane channel names,
duplicate operations, quotes, backslashes, control characters, numeric-looking
names, ttl only, no capability) are signed by ably-js in one Node process and
by :func:`flask_tokenreq.sign_token_request`; the JSON values must be equal
and each must verify with :func:`flask_tokenreq.verify_mac`.
"""

from __future__ import annotations

import json
import random
import subprocess
from pathlib import Path
from typing import Any

import pytest

from flask_tokenreq import sign_token_request, verify_mac

HERE = Path(__file__).resolve().parent
KEY = "appid.keyid:interop-secret-0123456789abcdef0123456789"

ALPHABET = [
    "a",
    "b",
    "Z",
    "0",
    "9",
    ":",
    "*",
    "[",
    "]",
    "-",
    "_",
    " ",
    '"',
    "\\",
    "/",
    "é",
    "ü",
    "ß",
    "中",
    "文",
    "～",
    "\uffff",
    "\ue000",
    "\u2028",
    "\x7f",
    "\x01",
    "\t",
    "😀",
    "🐍",
    "\U00010000",
    "\U0010ffff",
    "𝄞",
]
OPS = [
    "publish",
    "subscribe",
    "history",
    "presence",
    "*",
    "stats",
    "push-admin",
    "channel-metadata",
    "privileged-headers",
    "Publish",
    "é-op",
]
SPECIAL = [
    {"params": {"ttl": 60000}},
    {"params": {}},
    {"params": {"clientId": "*"}},
    {"params": {"capability": {}}},
    {"params": {"capability": '{"b":["x"],"a":["y","x"]}'}},
    {
        "params": {
            "capability": {
                "10": ["a"],
                "9": ["b"],
                "01": ["c"],
                "4294967295": ["d"],
                "4294967294": ["e"],
                "0": ["f"],
                "-1": ["g"],
                "1.5": ["h"],
            }
        }
    },
    {"params": {"capability": {"chan": ["publish", "publish", "subscribe", "publish"]}}},
    {"params": {"capability": {'he said "hi"': ["*"], "back\\slash": ["publish"]}}},
    {"params": {"capability": {"😀": ["publish"], "～": ["subscribe"], "\U0010ffff": ["a"]}}},
    {"params": {"clientId": 'ünïcødé 😀 "q" \\', "ttl": 1}},
]


def _name(rnd: random.Random) -> str:
    return "".join(rnd.choice(ALPHABET) for _ in range(rnd.randint(1, 6)))


def _cases() -> list[dict[str, Any]]:
    rnd = random.Random(20261122)
    cases: list[dict[str, Any]] = [dict(c) for c in SPECIAL]
    for _ in range(400):
        params: dict[str, Any] = {}
        if rnd.random() < 0.8:
            cap = {
                _name(rnd): [rnd.choice(OPS) for _ in range(rnd.randint(1, 5))]
                for _ in range(rnd.randint(1, 5))
            }
            params["capability"] = json.dumps(cap) if rnd.random() < 0.3 else cap
        if rnd.random() < 0.5:
            params["ttl"] = rnd.randint(1, 86_400_000)
        if rnd.random() < 0.5:
            params["clientId"] = _name(rnd)
        cases.append({"params": params})
    for i, case in enumerate(cases):
        case["params"]["timestamp"] = 1_700_000_000_000 + i
        case["params"]["nonce"] = f"{i:016d}{random.Random(i).getrandbits(64):x}"
        case["key"] = KEY
    return cases


@pytest.mark.node
def test_signer_matches_ably_js(node: str) -> None:
    cases = _cases()
    done = subprocess.run(
        [node, str(HERE / "sign.js")],
        input=json.dumps(cases, ensure_ascii=False).encode("utf-8"),
        capture_output=True,
        check=True,
        timeout=120,
    )
    expected = json.loads(done.stdout)
    assert len(expected) == len(cases)
    mismatches = []
    for case, theirs in zip(cases, expected, strict=True):
        assert "error" not in theirs, (case, theirs)
        p = case["params"]
        ours = sign_token_request(
            case["key"],
            ttl=p.get("ttl"),
            capability=p.get("capability"),
            client_id=p.get("clientId"),
            timestamp=p["timestamp"],
            nonce=p["nonce"],
        )
        if ours.to_dict() != theirs:
            mismatches.append((case, theirs, ours.to_dict()))
        assert verify_mac(theirs, case["key"].split(":", 1)[1])
    assert not mismatches, mismatches[:3]
