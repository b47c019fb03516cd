import hashlib
import hmac

from toil_arvados.localcluster.signing import (signature_expiry, sign_locator,
                                                token_secret, verify_locator)

KEY = "blobsigningkey"
TTL = 1209600
LOC = "acbd18db4cc2f85cedc43e7d1d4eaaa6+3"
NOW = 1_700_000_000


def test_message_format_matches_arvados():
    signed = sign_locator(LOC, "tok", KEY, TTL, now=NOW)
    expiry = f"{NOW + TTL:08x}"
    msg = f"{LOC[:32]}@tok@{expiry}@{TTL:x}"
    want = hmac.new(KEY.encode(), msg.encode(), hashlib.sha1).hexdigest()
    assert signed == f"{LOC}+A{want}@{expiry}"
    assert signature_expiry(signed) == NOW + TTL


def test_verify_roundtrip_and_failures():
    signed = sign_locator(LOC, "tok", KEY, TTL, now=NOW)
    assert verify_locator(signed, "tok", KEY, TTL, now=NOW + 10)
    assert not verify_locator(signed, "other", KEY, TTL, now=NOW + 10)
    assert not verify_locator(signed, "tok", "otherkey", TTL, now=NOW + 10)
    assert not verify_locator(signed, "tok", KEY, TTL + 1, now=NOW + 10)
    assert not verify_locator(signed, "tok", KEY, TTL, now=NOW + TTL + 1)  # expired
    assert not verify_locator(LOC, "tok", KEY, TTL, now=NOW)  # unsigned
    tampered = signed.replace(LOC[:5], "fffff", 1)
    assert not verify_locator(tampered, "tok", KEY, TTL, now=NOW + 10)
    sig_pos = signed.index("+A") + 2
    flipped = signed[:sig_pos] + ("0" if signed[sig_pos] != "0" else "1") + signed[sig_pos + 1:]
    assert not verify_locator(flipped, "tok", KEY, TTL, now=NOW + 10)


def test_v2_token_signs_secret_only():
    v2 = "v2/zzzzz-gj3su-000000000000000/s3cr3t"
    assert token_secret(v2) == "s3cr3t"
    signed = sign_locator(LOC, v2, KEY, TTL, now=NOW)
    assert signed == sign_locator(LOC, "s3cr3t", KEY, TTL, now=NOW)
    assert verify_locator(signed, "s3cr3t", KEY, TTL, now=NOW)
    assert verify_locator(signed, v2, KEY, TTL, now=NOW)


def test_resign_replaces_hint_and_keeps_other_hints():
    first = sign_locator(LOC + "+K@zzzzz", "tok", KEY, TTL, now=NOW)
    again = sign_locator(first, "tok", KEY, TTL, now=NOW + 100)
    assert again.count("+A") == 1 and "+K@zzzzz" in again
    assert verify_locator(again, "tok", KEY, TTL, now=NOW + 200)


def test_expires_at_caps_expiry():
    signed = sign_locator(LOC, "tok", KEY, TTL, now=NOW, expires_at=NOW + 60)
    assert signature_expiry(signed) == NOW + 60
    assert verify_locator(signed, "tok", KEY, TTL, now=NOW)
    assert not verify_locator(signed, "tok", KEY, TTL, now=NOW + 61)
