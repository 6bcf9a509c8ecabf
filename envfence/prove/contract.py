"""The worker's request contract: every AWS call the worker makes, recorded from its own code.

`Recorder` hooks botocore's event system on the worker's real boto3 clients
(`provide-client-params.*.*` for API calls; `before-sign.rds.connect` for the IAM database
token, which is signed locally and never sent as an API call) and keeps each call's service,
operation and parameters. `normalise` replaces the values that came from the worker's
configuration by `${VARIABLE}` placeholders (the environment variable that set them), so the
contract holds for every environment; `instantiate` puts one environment's values back.

The contract is committed as `app/request-contract.json` and re-recorded by
tests/test_request_contract.py, which fails when the worker's behaviour and the file differ
(`make contract` rewrites it). `envfence prove` translates each call of the contract into the
IAM requests AWS evaluates (`envfence.prove.translate`) for every environment, and proves each
one allowed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from envfence.prove.translate import Call, Unresolved

CONTRACT_FILE = Path("app") / "request-contract.json"
ROLE = "service"  # the task role the worker's calls are made with
_SPLIT = re.compile(r"([/&=])")
_PLACEHOLDER = re.compile(r"\$\{([A-Z0-9_]+)\}")


class ContractError(ValueError):
    """The contract file is missing or malformed; the message names it."""


class Recorder:
    """Collects the calls of the boto3 clients it is attached to, in order."""

    def __init__(self) -> None:
        self.calls: list[Call] = []

    def attach(self, client: Any) -> Any:
        events = client.meta.events
        events.register("provide-client-params.*.*", self._api_call)
        events.register("before-sign.rds.connect", self._db_token)
        return client

    def _api_call(self, params: Mapping[str, Any], model: Any, **_: Any) -> None:
        self.calls.append(Call(model.service_model.service_name, model.name, dict(params)))

    def _db_token(self, request: Any, **_: Any) -> None:
        # generate_db_auth_token presigns https://HOST:PORT/?Action=connect&DBUser=USER; at
        # before-sign the query is still the request's data.
        url = urlsplit(request.url)
        query = dict(parse_qsl(url.query))
        if isinstance(request.data, Mapping):
            query.update({str(k): str(v) for k, v in request.data.items()})
        self.calls.append(
            Call(
                "rds-db",
                "connect",
                {
                    "DBHostname": url.hostname or "",
                    "Port": str(url.port or 5432),
                    "DBUsername": query.get("DBUser", ""),
                },
            )
        )


def _normalise_value(value: Any, variables: Mapping[str, str]) -> Any:
    if isinstance(value, (bytes, bytearray)) or hasattr(value, "read"):
        return "<bytes>"
    if isinstance(value, Mapping):
        return {str(k): _normalise_value(v, variables) for k, v in sorted(value.items())}
    if isinstance(value, (list, tuple)):
        return [_normalise_value(v, variables) for v in value]
    if isinstance(value, str):
        by_value = {v: k for k, v in variables.items()}
        if value in by_value:
            return "${" + by_value[value] + "}"
        return "".join(
            "${" + by_value[piece] + "}" if piece in by_value else piece
            for piece in _SPLIT.split(value)
        )
    return value


def normalise(calls: Iterable[Call], variables: Mapping[str, str]) -> list[dict[str, Any]]:
    """The calls as contract entries, configuration values replaced by placeholders, repeated
    identical entries kept once (a contract lists what is called, not how often)."""
    values = [v for v in variables.values() if v]
    if len(set(values)) != len(values):
        raise ValueError("recording variables must have distinct values to be recognised")
    known = {k: v for k, v in variables.items() if v}
    out: list[dict[str, Any]] = []
    for call in calls:
        entry = {
            "service": call.service,
            "operation": call.operation,
            "params": _normalise_value(call.params, known),
        }
        if entry not in out:
            out.append(entry)
    return out


@dataclass(frozen=True)
class Contract:
    role: str
    scenarios: Mapping[str, list[dict[str, Any]]]  # tier -> entries

    def to_json(self) -> dict[str, Any]:
        return {
            "about": (
                "Every AWS call the envfence worker makes, recorded from app/worker by "
                "tests/test_request_contract.py (make contract rewrites this file). ${NAME} is "
                "the value of the worker's environment variable NAME in the stack's task "
                "definition. envfence prove turns each call into the IAM requests AWS evaluates "
                "(envfence/prove/translate.py) and proves each allowed in every environment."
            ),
            "role": self.role,
            "scenarios": {tier: list(entries) for tier, entries in self.scenarios.items()},
        }


def dump(contract: Contract) -> str:
    return json.dumps(contract.to_json(), indent=2, sort_keys=False) + "\n"


def load(path: Path) -> Contract:
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise ContractError(f"{path}: the worker's request contract is missing") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ContractError(f"{path}: not a JSON request contract ({exc})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("scenarios"), dict):
        raise ContractError(f"{path}: expected an object with 'scenarios' (tier -> calls)")
    scenarios: dict[str, list[dict[str, Any]]] = {}
    for tier, entries in doc["scenarios"].items():
        if not isinstance(entries, list) or not all(
            isinstance(e, dict)
            and isinstance(e.get("service"), str)
            and isinstance(e.get("operation"), str)
            and isinstance(e.get("params"), dict)
            for e in entries
        ):
            raise ContractError(
                f"{path}: scenarios.{tier} must be a list of {{service, operation, params}}"
            )
        scenarios[str(tier)] = entries
    return Contract(str(doc.get("role", ROLE)), scenarios)


def _substitute(value: Any, variables: Mapping[str, str | None]) -> Any:
    if isinstance(value, dict):
        return {k: _substitute(v, variables) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, variables) for v in value]
    if isinstance(value, str):

        def one(match: re.Match[str]) -> str:
            found = variables.get(match.group(1))
            if found is None:
                raise Unresolved(f"the worker's task sets no {match.group(1)}")
            return found

        return _PLACEHOLDER.sub(one, value)
    return value


def instantiate(
    entries: Iterable[Mapping[str, Any]], variables: Mapping[str, str | None]
) -> list[Call]:
    """The contract's calls with one environment's configuration values."""
    return [
        Call(str(e["service"]), str(e["operation"]), _substitute(dict(e["params"]), variables))
        for e in entries
    ]
