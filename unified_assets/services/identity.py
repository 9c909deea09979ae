"""Who decided: approvals, rejections and rollbacks signed with the decider's Ed25519 key.

A name typed into a form is not an identity. A decision is accepted as someone's only when
it carries a token signed by the private key whose public half the policy lists for that
name (`approval.keys`). The token binds everything the decision means (action, model,
version or rollback target, actor, reason) and when it was made, so it cannot be replayed
for another version or action, and is refused once older than `TOKEN_TTL` or dated in the
future. The token itself is kept with the decision, so the signature can be checked again
whenever the decision is acted on or audited.

Token: `uai1.<base64url(canonical JSON payload)>.<base64url(signature over those bytes)>`.
`cryptography` is imported inside functions, like every heavy dependency of the project.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import secrets
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from unified_assets.policy import SIGNATURE_PREFIX, person_problem, public_key_bytes

TOKEN_VERSION = "uai1"
ACTIONS = ("approve", "reject", "rollback")
TOKEN_TTL = timedelta(hours=24)  # long enough to sign in a terminal and paste in the UI
CLOCK_SKEW = timedelta(minutes=5)  # tolerated between the signer's clock and ours
SIGNING_KEY_ENV = "UNIFIED_AI_SIGNING_KEY"  # path of the CLI user's private key file


class IdentityError(ValueError):
    """A key or a signed decision that cannot be trusted; the message says why."""


@dataclass(frozen=True)
class SignedDecision:
    """What a token says: `version` is the rollback target ("" = the default) for rollbacks."""

    action: str
    model: str
    version: str
    actor: str
    reason: str
    issued_at: int  # unix seconds
    nonce: str

    def payload(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":")).encode()


# keys ---------------------------------------------------------------------------------------


def new_key_pair() -> tuple[bytes, str]:
    """A fresh private key (PKCS#8 PEM) and its public key as the policy lists it."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    return pem, public_key_text(key)


def public_key_text(private_key) -> str:
    from cryptography.hazmat.primitives import serialization

    raw = private_key.public_key().public_bytes(serialization.Encoding.Raw,
                                                serialization.PublicFormat.Raw)
    return SIGNATURE_PREFIX + base64.b64encode(raw).decode()


def write_key_pair(name: str, out_dir: str | Path) -> tuple[Path, str]:
    """Write `<out_dir>/<name>.key` (mode 0600, never overwritten) and return its path and
    the public key. The private key never leaves the file; only the public key is shared."""
    problem = person_problem(name)
    if problem:
        raise IdentityError(problem)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.key"
    pem, public = new_key_pair()
    try:
        # O_EXCL: an existing key is never replaced (its public half may be in the policy).
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise IdentityError(f"{path} already exists (`unified-ai keys show {name}` prints its "
                            "policy line again); choose another --out or remove it yourself"
                            ) from None
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    os.chmod(path, 0o600)  # whatever the umask
    return path, public


def load_private_key(path: str | Path):
    """The Ed25519 private key in `path`; refused if others may read it (as ssh does)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    path = Path(path)
    if not path.is_file():
        raise IdentityError(f"signing key {path}: file not found")
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise IdentityError(f"signing key {path}: mode {mode:o} lets others read it; "
                            f"`chmod 600 {path}`")
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as error:
        raise IdentityError(f"signing key {path}: not an unencrypted PEM private key "
                            f"({error})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise IdentityError(f"signing key {path}: {type(key).__name__}, not an Ed25519 key")
    return key


# tokens -------------------------------------------------------------------------------------


def sign(private_key, *, action: str, model: str, version: str, actor: str, reason: str,
         issued_at: datetime | None = None) -> str:
    """A token for one decision, signed with `private_key`."""
    if action not in ACTIONS:
        raise IdentityError(f"action {action!r} is not one of {ACTIONS}")
    if not reason.strip():
        raise IdentityError("a reason is required")
    problem = person_problem(actor)
    if problem:
        raise IdentityError(problem)
    when = issued_at or datetime.now(UTC)
    decision = SignedDecision(action=action, model=model, version=version, actor=actor,
                              reason=reason, issued_at=int(when.timestamp()),
                              nonce=secrets.token_hex(8))
    payload = decision.payload()
    return ".".join((TOKEN_VERSION, _b64(payload), _b64(private_key.sign(payload))))


def read_token(token: str) -> SignedDecision:
    """What a token claims, WITHOUT checking its signature (use `verify` for that)."""
    return _split(token)[0]


def token_id(token: str) -> str:
    """A stable id of a token (hash of its signature), to use each token once."""
    return hashlib.sha256(_split(token)[2]).hexdigest()


def verify(token: str, keys: dict[str, str], now: datetime) -> SignedDecision:
    """The decision a token carries, if signed by the key `keys` lists for its actor and
    issued within TOKEN_TTL before `now` (when the decision was taken); IdentityError
    otherwise."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    decision, payload, signature = _split(token)
    key = keys.get(decision.actor)
    if key is None:
        raise IdentityError(f"the token is signed in the name of {decision.actor!r}, whose key "
                            "the policy does not list (approval.keys)")
    try:
        Ed25519PublicKey.from_public_bytes(public_key_bytes(key)).verify(signature, payload)
    except InvalidSignature:
        raise IdentityError(f"the token's signature does not match {decision.actor!r}'s key in "
                            "the policy: it was altered or signed with another key") from None
    issued = datetime.fromtimestamp(decision.issued_at, UTC)
    if issued > now + CLOCK_SKEW:
        raise IdentityError(f"the token is dated {issued:%Y-%m-%d %H:%M:%S} UTC, in the "
                            "future: check the signer's clock")
    if now - issued > TOKEN_TTL:
        raise IdentityError(f"the token was signed at {issued:%Y-%m-%d %H:%M:%S} UTC, more "
                            f"than {TOKEN_TTL.total_seconds() / 3600:g} h ago; sign again")
    return decision


def _split(token: str) -> tuple[SignedDecision, bytes, bytes]:
    parts = token.strip().split(".") if isinstance(token, str) else []
    if len(parts) != 3 or parts[0] != TOKEN_VERSION:
        raise IdentityError(f"not a signed decision token (expected {TOKEN_VERSION}.<payload>."
                            "<signature>, as `unified-ai sign` prints)")
    try:
        payload, signature = _unb64(parts[1]), _unb64(parts[2])
        decision = SignedDecision(**json.loads(payload))
    except (binascii.Error, ValueError, TypeError):
        raise IdentityError("the token is damaged: its payload cannot be read") from None
    if not isinstance(decision.issued_at, int) or not all(
            isinstance(getattr(decision, name), str)
            for name in ("action", "model", "version", "actor", "reason", "nonce")):
        raise IdentityError("the token is damaged: its payload has fields of the wrong type")
    if decision.action not in ACTIONS:
        raise IdentityError(f"the token's action {decision.action!r} is not one of {ACTIONS}")
    return decision, payload, signature


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
