"""The shared key ring (servekit/keys.py): both file forms, the roles and classes, the
environment fallbacks, merging, and lookups that never echo a key."""

from __future__ import annotations

import pytest

from servekit.keys import ENV_FILE, ENV_TEXT, Identity, KeyRing, UnknownKey, narrows, read_key_file

LINES = """
# comment
sk-alice-0001 alice weight=2 priority=3
sk-alice-0002 alice            # a second key of alice's (rotation)
sk-door-0001  door role=service
sk-ops-00001  ops role=admin   # the operator
"""


def test_lines_give_identities_weights_and_classes():
    ring = KeyRing.from_text(LINES)
    assert len(ring) == 4 and ring.enabled
    assert ring.identity_for("Bearer sk-alice-0001") == Identity("alice", "tenant", 2.0, 3)
    assert ring.identity_for("bearer  sk-alice-0002 ") == Identity("alice")
    assert ring.identity_for("Bearer sk-door-0001").any_tenant
    assert ring.identity_for("Bearer sk-ops-00001").role == "admin"
    assert ring.weights() == {"alice": 2.0} and ring.priority_classes() == {"alice": 3}
    assert ring.tenants() == {"alice", "door", "ops"}


def test_json_objects_and_plain_names():
    bob = '{"tenant": "bob", "weight": 0.5, "priority": -1}'
    text = '{"sk-alice-0001": "alice", "sk-bob-00001": ' + bob + "}"
    ring = KeyRing.from_text(text)
    assert ring.tenant_for("Bearer sk-alice-0001") == "alice"
    assert ring.identity_for("Bearer sk-bob-00001") == Identity("bob", weight=0.5, priority=-1)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("short alice", "too short"),
        ("sk-alice-0001", ":1: expected 'KEY TENANT"),
        ("sk-alice-0001 alice role=root", "role must be one of"),
        ("sk-alice-0001 alice weight=-1", "must be > 0"),
        ("sk-alice-0001 alice weight=nan", "must be > 0"),
        ("sk-alice-0001 alice priority=1.5", "priority an integer"),
        ("sk-alice-0001 alice colour=red", "unknown field 'colour'"),
        ("sk-alice-0001 alice weight", "expected weight=W"),
        ("sk-alice-0001 alice\nsk-alice-0001 bob", ":2: this key is listed twice"),
        ("sk-alice-0001 alice weight=1\nsk-alice-0002 alice weight=2", "two weights"),
        ('{"sk-alice-0001": 3}', "expected a tenant name or an object"),
        ('{"sk-alice-0001": {"tenant": "a", "x": 1}}', "unknown field 'x'"),
        ("[1, 2]", 'expected {"KEY"'),
        ("{not json", "not valid JSON"),
    ],
)
def test_bad_files_name_the_source_and_the_problem(text, says):
    with pytest.raises(ValueError, match=r"^keys\.txt") as err:
        KeyRing.from_text(text, source="keys.txt")
    assert says in str(err.value)
    assert "sk-alice-0001" not in str(err.value)  # never the key itself


def test_lookups_refuse_missing_and_unknown_keys_without_echo():
    ring = KeyRing({"sk-alice-0001": "alice"})
    for auth in (
        None,
        "",
        "Bearer",
        "Bearer sk-alice-0002",
        "Basic sk-alice-0001",
        "sk-alice-0001",
    ):
        with pytest.raises(UnknownKey) as err:
            ring.identity_for(auth)
        assert "sk-alice" not in str(err.value)
    assert KeyRing().identity_for(None) is None and not KeyRing().enabled


def test_load_merges_files_else_reads_the_environment(tmp_path):
    a, b = tmp_path / "a.keys", tmp_path / "b.keys"
    a.write_text("sk-alice-0001 alice\n")
    b.write_text('{"sk-door-0001": {"tenant": "door", "role": "service"}}')
    ring = KeyRing.load([a, b], environ={})
    assert ring.tenants() == {"alice", "door"}
    with pytest.raises(ValueError, match="listed twice"):
        KeyRing.load([a, a], environ={})
    assert KeyRing.load([], environ={ENV_FILE: str(a)}).tenants() == {"alice"}
    text = KeyRing.load([], environ={ENV_TEXT: "sk-bob-00001 bob priority=2"})
    assert text.priority_classes() == {"bob": 2}
    assert not KeyRing.load([], environ={ENV_TEXT: "  \n"}).enabled


def test_narrowing_and_client_key_files(tmp_path):
    assert narrows("alice", "alice") and narrows("alice.sub", "alice")
    assert narrows("alice.sub.x", "alice.sub")
    assert not narrows("alicex", "alice") and not narrows("bob", "alice")
    assert not narrows("alice", "alice.sub")
    f = tmp_path / "door.key"
    f.write_text("# the door's key\nsk-door-0001 door role=service\n")
    assert read_key_file(f) == "sk-door-0001"
    f.write_text("# nothing\n")
    with pytest.raises(ValueError, match="holds no key"):
        read_key_file(f)
