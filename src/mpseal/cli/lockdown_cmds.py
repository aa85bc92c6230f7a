"""``mpseal lockdown``: plan, interfaces, docs, and ESP32 Secure Boot v2 keys and signatures."""

from __future__ import annotations

from pathlib import Path

import click
from rich.text import Text

from mpseal.cli.common import emit_json, out_console
from mpseal.errors import ConfigError
from mpseal.lockdown import docs as lockdown_docs
from mpseal.lockdown import esp32_signing as esp
from mpseal.lockdown import interfaces as itf
from mpseal.lockdown.buildfiles import write_plan
from mpseal.lockdown.plan import KEEP_CHOICES, Plan, build_plan


@click.group()
def lockdown() -> None:
    """Close the interfaces with a hole: plan per board, ESP32 Secure Boot v2 signing.

    Run-time settings stop a curious owner (T0); only hardware steps (eFuse, OTP, RDP)
    stop someone with tools (T3), and only where the chip has them.
    """


@lockdown.command()
@click.option("--board", required=True, help="Target board (see `mpseal init --help`).")
@click.option(
    "--keep",
    multiple=True,
    metavar="USE[,USE...]",
    help="Uses the product keeps: " + ", ".join(KEEP_CHOICES) + ".",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write the plan and the firmware build fragment into this folder.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
def plan(board: str, keep: tuple[str, ...], out_dir: Path | None, as_json: bool) -> None:
    """An ordered hardening plan: runtime profile, firmware build, hardware steps."""
    result = build_plan(board, keep, out=_as_typed(out_dir) if out_dir else "lockdown/")
    written = write_plan(result, out_dir) if out_dir else []
    if as_json:
        doc = result.to_dict()
        doc["files"] = [str(p) for p in written]
        emit_json(doc)
        return
    _print_plan(result)
    if written:
        out_console.print(f"Wrote {len(written)} files to {out_dir}", markup=False)


def _as_typed(folder: Path) -> str:
    """The --out folder as the plan's commands should echo it (shell-quoted if needed)."""
    import shlex

    text = str(folder)
    return shlex.quote(text if text.endswith("/") else text + "/")


def _print_plan(p: Plan) -> None:
    out_console.print(
        Text(
            f"Lockdown plan for {p.board}: profile {p.profile}, keep: "
            f"{', '.join(p.keep) or 'nothing'}",
            style="bold",
        )
    )
    for n, step in enumerate(p.steps, 1):
        head = Text(f"\n{n:2}. [{step.phase.value}] {step.title}")
        if step.irreversible:
            head.append("  IRREVERSIBLE", style="bold red")
        if step.stops:
            head.append(f"  (stops {step.stops.value})", style="dim")
        out_console.print(head)
        if step.detail:
            out_console.print(Text(_indent(step.detail)))
        for cmd in step.commands:
            out_console.print(Text("      $ " + cmd, style="cyan"))
        if step.verify:
            out_console.print(Text(_indent("verify: " + step.verify), style="green"))
    out_console.print(Text("\nLeft open:", style="bold"))
    if not p.left_open:
        out_console.print(Text("    nothing this plan knows of, up to T3 (T4 is out of scope)"))
    for o in p.left_open:
        out_console.print(
            Text(f"    {o.interface.id} ({o.interface.tier.value}): {o.why}", style="yellow")
        )


def _indent(text: str) -> str:
    return "\n".join("      " + line for line in text.splitlines())


@lockdown.command()
@click.option("--board", required=True, help="Target board.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def interfaces(board: str, as_json: bool) -> None:
    """Every interface of this board that can have a hole, and whether it can be closed."""
    items = itf.interfaces_for(board)
    if as_json:
        emit_json(
            [
                {
                    "id": i.id,
                    "title": i.title,
                    "tier": i.tier.value,
                    "closable": i.closable_on(board),
                    "levers": [
                        {
                            "id": lv.id,
                            "kind": lv.kind.value,
                            "stops": lv.stops.value,
                            "reversible": lv.reversible.value,
                        }
                        for lv in i.levers_for(board)
                    ],
                }
                for i in items
            ]
        )
        return
    for i in items:
        state = "closable" if i.closable_on(board) else "CANNOT be closed on this board"
        out_console.print(Text(f"{i.id:18} {i.tier.value}  {i.title}  [{state}]"))


@lockdown.command()
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=lockdown_docs.DOCS_DIR,
    show_default=True,
)
@click.option("--check", is_flag=True, help="Only check that the pages are up to date.")
def docs(out_dir: Path, check: bool) -> None:
    """Generate docs/lockdown/<port>.md from the interface data."""
    if check:
        stale = lockdown_docs.stale_pages(out_dir)
        if stale:
            raise ConfigError(
                f"{len(stale)} lockdown page(s) out of date, e.g. {stale[0]}; "
                "run: mpseal lockdown docs"
            )
        out_console.print("lockdown docs are up to date", markup=False)
        return
    written = lockdown_docs.write_docs(out_dir)
    out_console.print(f"Wrote {len(written)} pages to {out_dir}", markup=False)


@lockdown.command("esp32-key")
@click.argument("key", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--board", default="esp32", show_default=True, help="esp32 or esp32s3.")
@click.option(
    "--scheme",
    help="rsa3072 or ecdsa256 (default: the chip's; ESP32/ESP32-S3 accept rsa3072 only).",
)
@click.option(
    "--import",
    "source",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Import this existing PEM key instead of generating one.",
)
@click.option("--json", "as_json", is_flag=True)
def esp32_key(
    key: Path, board: str, scheme: str | None, source: Path | None, as_json: bool
) -> None:
    """Generate (or import) the Secure Boot v2 signing key: 0600, never overwritten."""
    if source is not None and scheme is not None:
        raise ConfigError("--scheme applies to a generated key; an imported key has its own")
    info = esp.import_key(key, source, board) if source else esp.generate_key(key, board, scheme)
    if as_json:
        emit_json(
            {
                "key": str(info.path),
                "scheme": info.scheme,
                "board": board,
                "digest": info.digest.hex(),
                "digest_file": str(info.digest_path),
            }
        )
        return
    out_console.print(
        f"{'Imported' if source else 'Generated'} {info.scheme} Secure Boot v2 key "
        f"{info.path} (0600) for {board}",
        markup=False,
    )
    out_console.print(f"  public key digest {info.digest.hex()}", markup=False)
    out_console.print(f"  eFuse digest file {info.digest_path}", markup=False)
    out_console.print("Keep the key offline; losing it ends firmware updates.", markup=False)


@lockdown.command("esp32-sign")
@click.argument("firmware", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--key", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--board", help="esp32 or esp32s3 (default: read from the image header).")
@click.option("--json", "as_json", is_flag=True)
def esp32_sign(firmware: Path, key: Path, output: Path, board: str | None, as_json: bool) -> None:
    """Sign an ESP app or bootloader image for Secure Boot v2 (through espsecure)."""
    res = esp.sign_image(firmware, key, output, board)
    if as_json:
        emit_json(
            {
                "input": str(firmware),
                "output": str(res.output),
                "board": res.board,
                "input_size": res.input_size,
                "signed_size": res.signed_size,
                "sha256": res.digest.hex(),
            }
        )
        return
    out_console.print(
        f"Signed {firmware} -> {res.output} ({res.input_size} -> "
        f"{res.signed_size} bytes, sha256 {res.digest.hex()[:16]})",
        markup=False,
    )


@lockdown.command("esp32-verify")
@click.argument("signed", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--key", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True)
def esp32_verify(signed: Path, key: Path, as_json: bool) -> None:
    """Check a Secure Boot v2 signature with espsecure (exit 3 if it does not verify)."""
    esp.verify_image(signed, key)
    if as_json:
        emit_json({"file": str(signed), "key": str(key), "ok": True})
        return
    out_console.print(f"OK {signed}: Secure Boot v2 signature verifies with {key}", markup=False)


COMMANDS = [lockdown]
