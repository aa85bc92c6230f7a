"""``mpseal ca`` / ``mpseal cert`` as a user meets them: files, refusals, one-line errors, JSON."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from conftest import Run, run_mpseal
from cryptography import x509


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def one_line_error(res: Run, code: int, *words: str) -> None:
    assert res.returncode == code, (res.returncode, res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mpseal: "), res.stderr
    assert "Traceback" not in res.stderr
    for w in words:
        assert w in lines[0], lines[0]


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("cli") / "ca"
    res = run_mpseal("ca", "init", folder, "--json")
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout)
    assert info["root"]["subject"].startswith("CN=mpseal fleet root CA")
    return folder


def snapshot(folder: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_ca_init_refuses_to_overwrite(ca: Path) -> None:
    before = snapshot(ca)
    res = run_mpseal("ca", "init", ca)
    one_line_error(res, 2, "already exists")
    assert snapshot(ca) == before


def test_issue_writes_keys_0600_and_refuses_to_overwrite_them(ca: Path, tmp_path: Path) -> None:
    res = run_mpseal(
        "cert", "issue", "device-9", "--ca", ca, "--role", "client", "--out", tmp_path, "--json"
    )
    assert res.returncode == 0, res.stderr
    files = {k: Path(v) for k, v in json.loads(res.stdout)["files"].items()}
    assert mode(files["key_pem"]) == 0o600 and mode(files["key_der"]) == 0o600
    assert mode(files["cert_der"]) == 0o644
    before = snapshot(tmp_path)
    for extra in ([], ["--force"]):  # --force replaces certificates, never keys
        res = run_mpseal(
            "cert", "issue", "device-9", "--ca", ca, "--role", "client", "--out", tmp_path, *extra
        )
        one_line_error(res, 2, "device-9.key.pem already exists")
        assert snapshot(tmp_path) == before


def test_issue_from_a_csr(ca: Path, tmp_path: Path) -> None:
    res = run_mpseal("cert", "csr", "api.example.com", "--out", tmp_path)
    assert res.returncode == 0, res.stderr
    assert mode(tmp_path / "api.example.com.key.pem") == 0o600
    key_before = (tmp_path / "api.example.com.key.pem").read_bytes()
    res = run_mpseal(
        "cert",
        "issue",
        "api.example.com",
        "--ca",
        ca,
        "--role",
        "server",
        "--csr",
        tmp_path / "api.example.com.csr.pem",
        "--out",
        tmp_path,
    )
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "api.example.com.key.pem").read_bytes() == key_before
    csr = x509.load_pem_x509_csr((tmp_path / "api.example.com.csr.pem").read_bytes())
    cert = x509.load_der_x509_certificate((tmp_path / "api.example.com.der").read_bytes())
    assert cert.public_key() == csr.public_key()
    # Renewal from the same CSR: refused unless --force, which replaces only certificates.
    res = run_mpseal(
        "cert",
        "issue",
        "api.example.com",
        "--ca",
        ca,
        "--role",
        "server",
        "--csr",
        tmp_path / "api.example.com.csr.pem",
        "--out",
        tmp_path,
    )
    one_line_error(res, 2, "already exists")
    res = run_mpseal(
        "cert",
        "issue",
        "api.example.com",
        "--ca",
        ca,
        "--role",
        "server",
        "--csr",
        tmp_path / "api.example.com.csr.pem",
        "--out",
        tmp_path,
        "--force",
    )
    assert res.returncode == 0, res.stderr


def test_encrypted_ca(tmp_path: Path) -> None:
    env = {"MPSEAL_PASSPHRASE": "a long enough passphrase"}
    res = run_mpseal("ca", "init", tmp_path / "ca", "--encrypt-keys", env=env)
    assert res.returncode == 0, res.stderr
    assert b"ENCRYPTED" in (tmp_path / "ca/offline/root-key.pem").read_bytes()
    args = (
        "cert",
        "issue",
        "d1",
        "--ca",
        tmp_path / "ca",
        "--role",
        "client",
        "--out",
        tmp_path / "out",
    )
    one_line_error(run_mpseal(*args), 2, "MPSEAL_PASSPHRASE")
    one_line_error(run_mpseal(*args, env={"MPSEAL_PASSPHRASE": "nope"}), 2, "wrong passphrase")
    assert not (tmp_path / "out").exists()
    assert run_mpseal(*args, env=env).returncode == 0


@pytest.mark.parametrize(
    "args,code,words",
    [
        (["cert", "lint", "/nonexistent/x.der"], 2, ["not found"]),
        (["cert", "lint", "{f}", "--device-clock", "yesterday"], 2, ["--device-clock"]),
        (
            ["cert", "issue", "x", "--ca", "{ca}", "--role", "server", "--san", "DNS:bad name"],
            2,
            ["not a host name"],
        ),
        (["cert", "issue", "x", "--ca", "{tmp}", "--role", "client"], 2, ["not an mpseal CA"]),
        (
            ["cert", "issue", "x", "--ca", "{ca}", "--role", "server", "--csr", "{f}"],
            3,
            ["not a certificate signing request"],
        ),
        (["cert", "issue", "../x", "--ca", "{ca}", "--role", "client"], 2, ["file name"]),
        (["cert", "anchor", "no-such-thing"], 2, ["neither a file nor host:port"]),
        (["cert", "anchor", "127.0.0.1:1"], 4, ["cannot fetch"]),
        (["cert", "anchor", "{f}"], 3, ["not an X.509 certificate"]),
        (["cert", "der", "{f}"], 2, ["not PEM"]),
        (["cert", "lint", "{f}", "--issuer", "{f}"], 3, ["not an X.509"]),
        (["cert", "expiry", "/nonexistent"], 2, ["not a folder"]),
    ],
)
def test_bad_input_is_one_line_and_non_zero(
    ca: Path, tmp_path: Path, args: list[str], code: int, words: list[str]
) -> None:
    junk = tmp_path / "junk.bin"
    junk.write_bytes(os.urandom(300))
    filled = [a.format(ca=ca, f=junk, tmp=tmp_path) for a in args]
    one_line_error(run_mpseal(*filled, cwd=tmp_path), code, *words)


def test_lint_human_and_json(ca: Path, tmp_path: Path) -> None:
    junk = tmp_path / "junk.der"
    junk.write_bytes(os.urandom(500))
    res = run_mpseal("cert", "lint", junk, ca / "root.pem", "--role", "ca")
    assert res.returncode == 3 and "Traceback" not in res.stderr
    assert "not-a-certificate" in res.stdout and "pem-not-der" in res.stdout
    assert "mpseal cert der" in res.stdout  # the fix is printed
    res = run_mpseal(
        "cert", "lint", ca / "root.der", "--role", "ca", "--device-clock", "2030-01-01", "--json"
    )
    assert res.returncode == 0, res.stdout
    report = json.loads(res.stdout)
    assert report["ok"] is True and report["counts"]["error"] == 0
    res = run_mpseal(
        "cert", "lint", ca / "root.der", "--role", "ca", "--device-clock", "2000-01-01", "--json"
    )
    assert res.returncode == 3
    codes = {f["code"] for f in json.loads(res.stdout)["findings"]}
    assert "device-clock-before-validity" in codes
    for f in json.loads(res.stdout)["findings"]:
        assert set(f) == {"severity", "code", "where", "message", "breaks", "fix"}


def test_lint_does_not_interpret_markup_from_certificates(tmp_path: Path) -> None:
    res = run_mpseal("ca", "init", tmp_path / "ca", "--name", "[red]x[/red] [link=file:///]y")
    assert res.returncode == 0, res.stderr
    assert "[red]x[/red]" in res.stdout


def test_der_and_expiry(ca: Path, tmp_path: Path) -> None:
    res = run_mpseal("cert", "der", ca / "ca-chain.pem", "--out", tmp_path, "--json")
    assert res.returncode == 0, res.stderr
    names = [Path(r["file"]).name for r in json.loads(res.stdout)]
    assert names == ["ca-chain-1.der", "ca-chain-2.der"]
    assert (tmp_path / "ca-chain-2.der").read_bytes() == (ca / "root.der").read_bytes()
    res = run_mpseal("cert", "expiry", ca, tmp_path, "--json")
    assert res.returncode == 0, res.stderr
    entries = json.loads(res.stdout)["certificates"]
    assert [e["is_ca"] for e in entries] == [True, True]
    assert entries[0]["not_after"] <= entries[1]["not_after"]
    assert "issuing" in entries[0]["subject"]
    res = run_mpseal("cert", "expiry", ca)
    assert res.returncode == 0 and "issuing CA" in res.stdout


def test_help_lists_the_commands() -> None:
    res = run_mpseal("cert", "--help")
    for cmd in ("issue", "csr", "der", "anchor", "lint", "expiry"):
        assert cmd in res.stdout
    assert "init" in run_mpseal("ca", "--help").stdout
