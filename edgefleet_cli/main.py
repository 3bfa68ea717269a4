"""``edgefleet`` commands. Exit codes (for CI):

====  ==================================================================================
0     done: staged, campaign completed, action accepted
1     refused or failed: validation rejected the version, the server refused, campaign aborted
2     the rollout was rolled back, or paused by a gate (the gate's reason is printed)
3     timed out waiting (``--timeout``)
4     cannot reach the server, or the token is missing, unknown or lacks the role
64    bad command line
====  ==================================================================================
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any

from edgefleet_cli import __version__, config
from edgefleet_cli.client import ApiError, Client, Unreachable

OK, FAILED, REGRESSED, TIMEOUT, UNREACHABLE, USAGE = 0, 1, 2, 3, 4, 64
SELECTOR_CHARS = set("=!(),")


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own exit 2 would read as "rolled back"
        self.print_usage(sys.stderr)
        print(f"edgefleet: {message}", file=sys.stderr)
        sys.exit(USAGE)


def say(*parts: Any) -> None:
    print(*parts, flush=True)


def warn(*parts: Any) -> None:
    print(*parts, file=sys.stderr, flush=True)


def emit(args: argparse.Namespace, data: Any, text: str) -> None:
    say(json.dumps(data, indent=2, default=str) if args.json else text)


# ------------------------------------------------------------------------------------------- push


def lineage_body(args: argparse.Namespace) -> dict[str, Any]:
    """``--lineage FILE`` (JSON: {"meta": …, "links": …}) merged with ``--meta k=v`` and ``--link name=url``.

    Only the shape is checked here; the server checks every bound and answers 400 naming the field.
    """
    body: dict[str, Any] = {}
    if args.lineage:
        try:
            body = json.loads(Path(args.lineage).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise argparse.ArgumentTypeError(f"--lineage {args.lineage}: {exc}") from None
        if not isinstance(body, dict):
            raise argparse.ArgumentTypeError('--lineage must hold a JSON object {"meta": {...}, "links": {...}}')
    for flag, key in (("meta", "meta"), ("link", "links")):
        for item in getattr(args, flag) or []:
            name, sep, value = item.partition("=")
            if not sep or not name.strip():
                raise argparse.ArgumentTypeError(f"--{flag} {item!r} is not name=value")
            section = body.setdefault(key, {})
            if not isinstance(section, dict):
                raise argparse.ArgumentTypeError(f"{key} in --lineage must be a JSON object")
            section[name.strip()] = value.strip()
    return body


def cmd_push(api: Client, args: argparse.Namespace) -> int:
    path = Path(args.file)
    if not path.is_file():
        warn(f"edgefleet: no such file {path}")
        return USAGE
    data = {"label": args.label, "notes": args.notes or "", "int8": "1" if args.int8 else ""}
    try:
        lineage = lineage_body(args)
    except argparse.ArgumentTypeError as exc:
        warn(f"edgefleet: {exc}")
        return USAGE
    if lineage:
        data["lineage"] = json.dumps(lineage)
    with contextlib.ExitStack() as stack:
        files: dict[str, Any] = {"file": (path.name, stack.enter_context(path.open("rb")), "application/octet-stream")}
        if args.reference:
            ref = Path(args.reference)
            files["reference"] = (ref.name, stack.enter_context(ref.open("rb")), "application/octet-stream")
        version = api.post(f"/models/{args.model}/versions", data=data, files=files, timeout=3600)
    say(f"uploaded {version['model']}:{version['label']} ({version['status']}), sha256 {version['sha256'][:12]}")
    if not args.wait:
        if args.json:
            emit(args, version, "")
        return OK
    deadline = time.monotonic() + args.timeout
    while version["status"] == "validating":
        if time.monotonic() > deadline:
            warn(f"timed out after {args.timeout:g} s: {version['model']}:{version['label']} is still validating")
            return TIMEOUT
        time.sleep(args.interval)
        version = api.get(version["status_url"])
    if args.json:
        emit(args, version, "")
    if version["status"] == "staged":
        lat = (version.get("report") or {}).get("latency_ms") or {}
        variants = ", ".join(v["kind"] for v in version.get("variants", [])) or "none"
        say(f"staged: {version['model']}:{version['label']} (p95 {lat.get('p95', '?')} ms, variants: {variants})")
        return OK
    warn(f"{version['status']}: {version.get('error') or 'no reason given'}")
    return FAILED


# ------------------------------------------------------------------------------------------ aliases


def cmd_alias(api: Client, args: argparse.Namespace) -> int:
    if args.action == "list":
        items = api.get(f"/models/{args.model}/aliases")
        lines = [f"{a['model']}@{a['alias']:12} → {a['version']}  ({a['updated_by'] or '-'}, {a['updated_at'][:16]})"
                 for a in items]  # fmt: skip
        emit(args, items, "\n".join(lines) or f"{args.model} has no aliases")
        return OK
    if args.action == "set":
        a = api.request("PUT", f"/models/{args.model}/aliases/{args.alias}", json={"version": args.version})
        emit(args, a, f"{a['model']}@{a['alias']} → {a['version']}")
        return OK
    api.request("DELETE", f"/models/{args.model}/aliases/{args.alias}")
    emit(args, {"removed": f"{args.model}@{args.alias}"}, f"removed {args.model}@{args.alias}")
    return OK


# ---------------------------------------------------------------------------------------- rollout


def parse_waves(text: str, soak: float, min_devices: int) -> list[dict[str, Any]]:
    """``5,25,100`` (with --soak/--min-devices for every wave) or ``5:30:20,25:30:50,100``."""
    waves = []
    for part in text.split(","):
        fields = [f.strip().rstrip("%") for f in part.strip().split(":")]
        if not fields[0]:
            continue
        try:
            wave: dict[str, Any] = {"percent": float(fields[0])}
            wave["min_soak_minutes"] = float(fields[1]) if len(fields) > 1 and fields[1] else soak
            wave["min_devices"] = int(fields[2]) if len(fields) > 2 and fields[2] else min_devices
        except ValueError:
            raise argparse.ArgumentTypeError(f"wave {part!r} is not percent[:soak minutes[:min devices]]") from None
        waves.append(wave)
    return waves


def plan(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {"model": args.model, "version": args.version}
    try:
        body["waves"] = parse_waves(args.waves, args.soak, args.min_devices)
    except argparse.ArgumentTypeError as exc:
        raise SystemExit(f"edgefleet: {exc}") from None
    if args.cohort:
        looks_like_selector = bool(SELECTOR_CHARS & set(args.cohort)) or " in " in args.cohort
        body["selector" if looks_like_selector else "cohort"] = args.cohort
    if args.provider or args.min_storage_mb:
        body["requirements"] = {"provider": args.provider, "min_storage_mb": args.min_storage_mb or 0}
    if args.window:
        body["windows"] = list(args.window)  # checked by the server (400 naming "windows")
    if args.window_tz:
        body["window_tz"] = args.window_tz
    if args.require:
        body["conditions"] = parse_require(args.require)
    return body


REQUIRE_WORDS = {"power": ("power", "external"), "unmetered": ("network", "unmetered"), "idle": ("idle", True)}


def parse_require(texts: list[str]) -> dict[str, Any]:
    """``--require power,unmetered --require idle`` → the API's ``conditions``."""
    out: dict[str, Any] = {}
    for text in texts:
        for word in (w.strip().lower() for w in text.replace(" ", ",").split(",")):
            if not word:
                continue
            if word not in REQUIRE_WORDS:
                raise SystemExit(f"edgefleet: --require {word!r}: use power, unmetered or idle")
            key, value = REQUIRE_WORDS[word]
            out[key] = value
    return out


def gate_line(status: dict[str, Any]) -> str:
    rows = status.get("gates_report") or []
    return ", ".join(f"{g['name']} {g['verdict']}" for g in rows) or "no verdict yet"


def progress_line(c: dict[str, Any]) -> str:
    p = c.get("progress") or {}
    wave = c.get("wave")
    percent = c["waves"][wave - 1]["percent"] if wave else 0
    waiting = p.get("waiting") or {}
    wait = ""
    if waiting.get("devices"):
        why = ", ".join(f"{k} {v}" for k, v in waiting.items() if k != "devices" and v)
        wait = f", {waiting['devices']} waiting ({why})"
    return (
        f"wave {wave or '-'}/{len(c['waves'])} ({percent:g}%): {p.get('on_version', 0)} of {p.get('targeted', 0)} "
        f"targeted devices on {c['version']}, {p.get('committed', 0)} committed, "
        f"{p.get('install_failed', 0)} failed installs, {p.get('not_committed', 0)} never committed{wait}; "
        f"gates: {gate_line(c)}"
    )


def failed_gates(numbers: dict[str, Any]) -> str:
    rows = [g for g in numbers.get("gates", []) if isinstance(g, dict) and g.get("verdict") == "fail"]
    return "; ".join(
        f"{g['name']}: observed {g.get('observed')} > threshold {g.get('threshold')} ({g.get('detail') or ''})".rstrip(
            " ()"
        )
        for g in rows
    )


TERMINAL = {"completed": "complete", "rolled_back": "rollback", "aborted": "abort"}
TRANSIENT = (408, 425, 429, 500, 502, 503, 504)


def _settled(api: Client, cid: int, state: str) -> tuple[str, dict[str, Any]] | None:
    """The campaign's final state and the decision that made it, read after the state was seen.

    Decided from the stored state and the decision *of that kind* (not whatever "last decision" a
    racing read returned): a rollback is always exit 2, however the reads interleave under load.
    None: not settled (running, or paused by a person: the rollout may still resume)."""
    kind = TERMINAL.get(state)
    if kind is None and state != "paused":
        return None
    c = api.get(f"/campaigns/{cid}")  # again: the state seen may have moved on (paused -> rolled back)
    state = c["state"]
    kind = TERMINAL.get(state, "pause" if state == "paused" else None)
    if kind is None:
        return None
    decisions = list(api.pages(f"/campaigns/{cid}/decisions", kind=kind))
    decision = decisions[-1] if decisions else (c.get("last_decision") or {})
    if state == "paused" and decision.get("actor") != "system":
        return None  # paused by a person: keep following
    return state, decision


def watch(api: Client, args: argparse.Namespace, cid: int) -> int:
    """Stream decisions and progress until the campaign ends; the exit code says how it ended.

    A transient failure of the server (timeout, 429, 5xx) while following is retried until the
    timeout: under load a slow answer must not turn a rollback into "cannot reach the server"."""
    deadline = time.monotonic() + args.timeout
    last_id, last_line = 0, ""
    while True:
        try:
            for d in api.pages(f"/campaigns/{cid}/decisions", after=last_id):
                last_id = d["id"]
                if d["kind"] == "hold" and not args.verbose:
                    continue
                who = "" if d["actor"] == "system" else f" by {d['actor']}"
                wave = d["numbers"].get("wave")
                say(f"{d['at'][11:19]} {d['kind']}{who}" + (f" (wave {wave})" if wave else "") +
                    (f": {d['reason']}" if d["reason"] else ""))  # fmt: skip
            c = api.get(f"/campaigns/{cid}")
            line = progress_line(c)
            if line != last_line:
                say("  " + line)
                last_line = line
            settled = _settled(api, cid, c["state"])
        except (Unreachable, ApiError) as exc:
            if isinstance(exc, ApiError) and exc.status not in TRANSIENT:
                raise
            if time.monotonic() > deadline:
                raise
            warn(f"edgefleet: {exc}; retrying")
            time.sleep(args.interval)
            continue
        if settled is not None:
            return _report_end(c, *settled)
        if time.monotonic() > deadline:
            warn(f"timed out after {args.timeout:g} s; campaign {cid} is {c['state']}")
            return TIMEOUT
        time.sleep(args.interval)


def _report_end(c: dict[str, Any], state: str, decision: dict[str, Any]) -> int:
    if state == "completed":
        say(f"completed: {c['model']}:{c['version']} is the release for {c['cohort'] or 'every device'}")
        return OK
    if state in ("rolled_back", "paused"):
        what = "rolled back" if state == "rolled_back" else "paused"
        warn(f"{what}: {decision.get('reason') or 'no reason given'}")
        detail = failed_gates(decision.get("numbers") or {})
        if detail:
            warn(f"  {detail}")
        return REGRESSED
    warn(f"aborted: {decision.get('reason') or ''}".rstrip(": "))
    return FAILED


def cmd_rollout(api: Client, args: argparse.Namespace) -> int:
    body = plan(args)
    if args.dry_run:
        dry = api.post("/campaigns/dry-run", body)
        if args.json:
            emit(args, dry, "")
            return OK
        say(f"{dry['total']} devices in the cohort, {dry['compatible']} compatible")
        for reason, n in sorted(dry["excluded"].items()):
            say(f"  excluded ({reason}): {n}")
        for w in dry["waves"]:
            say(f"  wave {w['number']} ({w['percent']:g}%): {w['devices']} devices")
        waiting = dry.get("waiting") or {}
        if waiting.get("devices"):
            why = ", ".join(f"{k} {v}" for k, v in waiting.items() if k != "devices" and v)
            say(f"  waiting now for a window or a condition: {waiting['devices']} ({why})")
        return OK
    if args.gate:
        gates = {}
        for g in args.gate:
            name, _, value = g.partition("=")
            try:
                gates[name.strip()] = float(value)
            except ValueError:
                warn(f"edgefleet: --gate {g!r} is not name=threshold")
                return USAGE
        body["gates"] = gates
    body.update(
        name=args.name or f"{args.model}:{args.version} → {args.cohort or 'all devices'}",
        on_failure=args.on_failure,
        start=True,
    )
    if args.previous:
        body["previous_version"] = args.previous
    if args.commit_minutes is not None:
        body["commit_minutes"] = args.commit_minutes
    c = api.post("/campaigns", body)
    say(f"campaign {c['id']} “{c['name']}” started: wave 1 of {len(c['waves'])} ({c['waves'][0]['percent']:g}%)")
    if args.json and not args.wait:
        emit(args, c, "")
    return watch(api, args, c["id"]) if args.wait else OK


# ------------------------------------------------------------------------------------------ status


def cmd_status(api: Client, args: argparse.Namespace) -> int:
    s = api.get("/status")
    if args.json:
        emit(args, s, "")
        return OK
    d = s["devices"]
    say(f"devices: {d['total']} ({d['online']} online, {d['stale']} stale, {d['offline']} offline, "
        f"{d['never']} never seen)")  # fmt: skip
    for model, counts in s["versions_in_use"].items():
        say(f"  {model}: " + ", ".join(f"{label} × {n}" for label, n in counts))
    say(f"open alerts: {s['open_alerts']}")
    for c in s["active_campaigns"]:
        say(f"campaign {c['id']} {c['name']}: {c['state']}, wave {c['wave'] or '-'}/{len(c['waves'])}")
    return OK


# ----------------------------------------------------------------------------------------- devices


def device_line(d: dict[str, Any]) -> str:
    labels = ",".join(f"{k}={v}" for k, v in sorted(d["labels"].items()))
    installed = ",".join(f"{k}:{v}" for k, v in sorted(d["installed"].items()))
    revoked = " REVOKED" if d["revoked"] else ""
    return f"{d['id']}  {d['name'] or '-':20} {d['status']:8} {labels or '-':30} {installed or '-'}{revoked}"


def cmd_devices(api: Client, args: argparse.Namespace) -> int:
    if args.action in ("list", "search"):
        params = {"labels": args.labels, "status": args.status, "model": args.model_name, "version": args.version}
        if args.action == "search":
            params["q"] = args.query
        items = list(api.pages("/devices", limit=args.limit, **params))
        emit(args, items, "\n".join(device_line(d) for d in items) or "no devices match")
        return OK
    if args.action == "relabel":
        sets = dict(kv.split("=", 1) for kv in args.set or [] if "=" in kv)
        if len(sets) != len(args.set or []):
            warn("edgefleet: --set takes key=value")
            return USAGE
        body: dict[str, Any] = {"set": sets, "remove": args.remove or [], "dry_run": args.dry_run,
                                "max_devices": args.max}  # fmt: skip
        if args.ids:
            body["ids"] = args.ids
        else:
            body["selector"] = args.selector
        result = api.post("/devices/relabel", body)
        verb = "would change" if result["dry_run"] else "changed"
        emit(args, result, f"{result['matched']} devices match, {verb} {result['changed']}")
        return OK
    d = api.post(f"/devices/{args.device}/revoke")
    emit(args, d, f"revoked {d['id']} ({d['name']})")
    return OK


# --------------------------------------------------------------------------------------- campaigns


def cmd_campaigns(api: Client, args: argparse.Namespace) -> int:
    if args.action == "list":
        items = list(api.pages("/campaigns", limit=args.limit, state=args.state, model=args.model_name))
        lines = [f"{c['id']:5} {c['state']:11} {c['model']}:{c['version']:10} wave {c['wave'] or '-'}/"
                 f"{len(c['waves'])}  {c['name']}" for c in items]  # fmt: skip
        emit(args, items, "\n".join(lines) or "no campaigns")
        return OK
    if args.action == "show":
        c = api.get(f"/campaigns/{args.id}")
        emit(args, c, f"{c['id']} {c['name']}: {c['state']}\n  {progress_line(c)}")
        return OK
    if args.action == "watch":
        return watch(api, args, args.id)
    c = api.post(f"/campaigns/{args.id}/{args.action}", {"reason": args.reason or ""})
    emit(args, c, f"campaign {c['id']}: {c['state']} (wave {c['wave'] or '-'}/{len(c['waves'])})")
    return OK


def cmd_alerts(api: Client, args: argparse.Namespace) -> int:
    if args.action == "list":
        items = list(api.pages("/alerts", limit=args.limit, state=args.state))
        lines = [f"{a['id']:5} {a['state']:8} {a['kind']:10} {a['model']}:{a['version']} {a['cohort']} "
                 f"{a['feature']}  {a['message'][:80]}" for a in items]  # fmt: skip
        emit(args, items, "\n".join(lines) or "no alerts")
        return OK
    a = api.post(f"/alerts/{args.id}/resolve")
    emit(args, a, f"alert {a['id']} resolved")
    return OK


# ------------------------------------------------------------------------------------------ parser


def build_parser() -> Parser:
    p = Parser(prog="edgefleet", description="EdgeFleet from the command line (uses the /api/v1 management API).")
    p.add_argument("--url", help="server URL (default: $EDGEFLEET_URL or the config file)")
    p.add_argument("--token", help="API token (default: $EDGEFLEET_TOKEN or the config file)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--version", action="version", version=f"edgefleet {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)

    push = sub.add_parser("push", help="upload a model version (and wait for validation)")
    push.add_argument("model")
    push.add_argument("file")
    push.add_argument("--label", required=True)
    push.add_argument("--reference", help="reference data set (.npz or .csv) for drift")
    push.add_argument("--notes")
    push.add_argument(
        "--int8", action="store_true", help="also build the compressed variants (int8, static int8, fp16, optimised)"
    )
    push.add_argument("--meta", action="append", help="lineage metadata name=value (repeat), e.g. git_commit=abc")
    push.add_argument("--link", action="append", help="lineage link name=https://… (repeat), e.g. run=https://…")
    push.add_argument("--lineage", help='JSON file {"meta": {...}, "links": {...}} (--meta/--link add to it)')
    push.add_argument("--wait", action="store_true", help="wait until staged (exit 0) or rejected (exit 1)")
    push.add_argument("--timeout", type=float, default=1800)
    push.add_argument("--interval", type=float, default=2)
    push.set_defaults(fn=cmd_push)

    ro = sub.add_parser("rollout", help="start a campaign (and follow it)")
    ro.add_argument("model")
    ro.add_argument("version", help="a label, or an alias (production or @production)")
    ro.add_argument("--cohort", help="a saved cohort's name or a label selector, e.g. 'region=eu'")
    ro.add_argument("--waves", default="5,25,100", help="percentages, or percent:soak:min_devices per wave")
    ro.add_argument("--soak", type=float, default=30, help="minutes each wave soaks (default 30)")
    ro.add_argument("--min-devices", type=int, default=0, help="canary devices that must report per wave")
    ro.add_argument("--gate", action="append", help="name=threshold (repeat); default: every gate at its default")
    ro.add_argument("--on-failure", choices=["rollback", "pause"], default="rollback")
    ro.add_argument("--name")
    ro.add_argument("--previous", help="the version to roll back to (default: the cohort's release)")
    ro.add_argument("--provider", help="require this onnxruntime execution provider")
    ro.add_argument("--min-storage-mb", type=float, default=0)
    ro.add_argument(
        "--window",
        action="append",
        help="maintenance window (repeat), e.g. 'mon-fri 01:00-05:00'; devices install only inside",
    )
    ro.add_argument("--window-tz", help="'device' (default: each device's tz label, else UTC) or a zone, e.g. UTC")
    ro.add_argument("--require", action="append", help="install conditions: power, unmetered, idle (comma separated)")
    ro.add_argument("--commit-minutes", type=float, help="an installed device must commit within this (default 60)")
    ro.add_argument("--dry-run", action="store_true", help="only show how many devices each wave reaches")
    ro.add_argument("--wait", action="store_true", help="follow until complete (0), rolled back or paused (2)")
    ro.add_argument("--timeout", type=float, default=24 * 3600)
    ro.add_argument("--interval", type=float, default=5)
    ro.add_argument("--verbose", action="store_true", help="also print holds")
    ro.set_defaults(fn=cmd_rollout)

    als = sub.add_parser("alias", help="list, set (create or move) and remove a model's aliases")
    alsub = als.add_subparsers(dest="action", required=True, parser_class=Parser)
    alsub.add_parser("list").add_argument("model")
    aset = alsub.add_parser("set")
    aset.add_argument("model")
    aset.add_argument("alias", help="e.g. production, staging, candidate")
    aset.add_argument("version", help="a label or @another-alias")
    arm = alsub.add_parser("rm")
    arm.add_argument("model")
    arm.add_argument("alias")
    als.set_defaults(fn=cmd_alias)

    st = sub.add_parser("status", help="the fleet at a glance")
    st.set_defaults(fn=cmd_status)

    dev = sub.add_parser("devices", help="list, search, relabel, revoke devices")
    dsub = dev.add_subparsers(dest="action", required=True, parser_class=Parser)
    for name in ("list", "search"):
        d = dsub.add_parser(name)
        if name == "search":
            d.add_argument("query", help="part of the name or the start of the id")
        d.add_argument("--labels", help="label selector")
        d.add_argument("--status", choices=["online", "stale", "offline", "never"])
        d.add_argument("--model", dest="model_name")
        d.add_argument("--version")
        d.add_argument("--limit", type=int, default=100)
    rl = dsub.add_parser("relabel")
    target = rl.add_mutually_exclusive_group(required=True)
    target.add_argument("--selector", help="devices matching this selector ('' is every device)")
    target.add_argument("--id", dest="ids", action="append", help="a device id (repeat)")
    rl.add_argument("--set", action="append", help="key=value (repeat)")
    rl.add_argument("--remove", action="append", help="label key (repeat)")
    rl.add_argument("--dry-run", action="store_true")
    rl.add_argument("--max", type=int, default=10000, help="refuse when more devices match")
    rv = dsub.add_parser("revoke")
    rv.add_argument("device")
    dev.set_defaults(fn=cmd_devices)

    camp = sub.add_parser("campaigns", help="list, show, watch, pause, resume, advance, roll back, abort")
    csub = camp.add_subparsers(dest="action", required=True, parser_class=Parser)
    cl = csub.add_parser("list")
    cl.add_argument("--state")
    cl.add_argument("--model", dest="model_name")
    cl.add_argument("--limit", type=int, default=50)
    for name in ("show", "watch", "start", "pause", "resume", "advance", "rollback", "abort"):
        c = csub.add_parser(name)
        c.add_argument("id", type=int)
        c.add_argument("--reason", required=name in ("advance", "rollback"))
        c.add_argument("--timeout", type=float, default=24 * 3600)
        c.add_argument("--interval", type=float, default=5)
        c.add_argument("--verbose", action="store_true")
    camp.set_defaults(fn=cmd_campaigns)

    al = sub.add_parser("alerts", help="list and resolve alerts")
    asub = al.add_subparsers(dest="action", required=True, parser_class=Parser)
    ali = asub.add_parser("list")
    ali.add_argument("--state", choices=["open", "resolved"], default="open")
    ali.add_argument("--limit", type=int, default=50)
    ar = asub.add_parser("resolve")
    ar.add_argument("id", type=int)
    al.set_defaults(fn=cmd_alerts)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = config.load(args.url, args.token)
    except config.ConfigError as exc:
        warn(f"edgefleet: {exc}")
        return UNREACHABLE
    api = Client(cfg.url, cfg.token)
    try:
        return int(args.fn(api, args))
    except ApiError as exc:
        warn(f"edgefleet: {exc}")
        return UNREACHABLE if exc.status in (401, 403) else FAILED
    except Unreachable as exc:
        warn(f"edgefleet: {exc}")
        return UNREACHABLE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
