"""Tamper and fuzz tests for the artifact and the other parsers of untrusted bytes."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import pytest
from conftest import run_mpseal
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mpseal.errors import (
    BadDataError,
    FormatError,
    IntegrityError,
    MpsealError,
    PolicyError,
    SignatureError,
)
from mpseal.formats import artifact, config, envelope, manifest, romfs, trustroot
from mpseal.formats.artifact import HEADER_LENGTH
from mpseal.packaging.project import Project


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, trustroot.TrustRoot, Path]:
    folder = tmp_path_factory.mktemp("t") / "proj"
    assert run_mpseal("init", folder, "--board", "unix", "--name", "hello").returncode == 0
    assert run_mpseal("build", "-C", folder).returncode == 0
    art = folder / "dist" / "hello-1.0.0.mpseal"
    return art.read_bytes(), Project.load(folder).trust_root(), folder


def regions(blob: bytes) -> list[tuple[range, str, type[BadDataError]]]:
    """Each byte-position class of an artifact with the error its damage must produce."""
    _, _, _, mlen, count, _, off, ilen, _ = artifact.HEADER.unpack_from(blob)
    sig_start = HEADER_LENGTH + mlen
    sig_end = sig_start + 96 * count
    return [
        (range(8), "wrong magic", FormatError),
        (range(8, 10), "format version", FormatError),
        (range(10, 32), "header is damaged", FormatError),
        (range(32, sig_start), "manifest was altered", SignatureError),
        (range(sig_start, sig_start + 32), "unknown key", SignatureError),
        (range(sig_start + 32, sig_end), "does not verify", SignatureError),
        (range(sig_end, off), "padding", FormatError),
        (range(off, off + ilen), "image SHA-256 does not match", IntegrityError),
    ]


def test_regions_cover_every_byte(sample) -> None:
    blob, _, _ = sample
    covered = sorted(i for r, _, _ in regions(blob) for i in r)
    assert covered == list(range(len(blob)))


def test_every_byte_altered_is_refused_with_the_matching_error(sample) -> None:
    blob, root, _ = sample
    artifact.verify(blob, root, board="unix")  # the pristine artifact passes
    for span, pattern, kind in regions(blob):
        for i in span:
            for bit in (0x01, 0x80):
                bad = bytearray(blob)
                bad[i] ^= bit
                with pytest.raises(kind) as info:
                    artifact.verify(bytes(bad), root, board="unix")
                assert re.search(pattern, str(info.value)), (i, bit, str(info.value))


def test_every_truncation_is_refused(sample) -> None:
    blob, root, _ = sample
    for n in range(len(blob)):
        with pytest.raises(FormatError, match="truncated"):
            artifact.verify(blob[:n], root)
    with pytest.raises(FormatError, match="unexpected bytes after the image"):
        artifact.verify(blob + b"\0", root)


def test_wrong_board_and_rollback_are_policy_refusals(sample) -> None:
    blob, root, _ = sample
    with pytest.raises(PolicyError, match="built for board 'unix', not 'esp32'"):
        artifact.verify(blob, root, board="esp32")
    with pytest.raises(PolicyError, match="rollback refused"):
        artifact.verify(blob, root, min_counter=2)


def with_field(blob: bytes, offset: int, fmt: str, value: int) -> bytes:
    """A hostile header: one field changed and the check bytes recomputed to match."""
    bad = bytearray(blob)
    struct.pack_into(fmt, bad, offset, value)
    bad[28:32] = artifact.header_check(bytes(bad))
    return bytes(bad)


@pytest.mark.parametrize(
    ("offset", "fmt", "value", "message"),
    [
        (10, "<H", 64, "header length field is 64"),
        (12, "<I", 10**9, "manifest length .* exceeds"),
        (16, "<B", 0, "signature count 0"),
        (16, "<B", 200, "signature count 200"),
        (17, "<B", 1, "reserved"),
        (20, "<I", 4096, "image offset 4096 is not where"),
        (24, "<I", 2**31, "image length .* exceeds"),
        (24, "<I", 1, "unexpected bytes after the image"),
    ],
)
def test_hostile_header_fields_are_refused_before_reading_them(
    sample, offset, fmt, value, message
) -> None:
    blob, root, _ = sample
    with pytest.raises(FormatError, match=message):
        artifact.verify(with_field(blob, offset, fmt, value), root)


def test_shifted_manifest_length_is_caught(sample) -> None:
    blob, root, _ = sample
    mlen = struct.unpack_from("<I", blob, 12)[0]
    with pytest.raises(BadDataError):
        artifact.verify(with_field(blob, 12, "<I", mlen - 1), root)


CLI_CASES = {
    "truncated": (lambda b: b[: len(b) // 2], "truncated"),
    "wrong magic": (lambda b: b"XX" + b[2:], "wrong magic bytes"),
    "damaged header": (lambda b: b[:20] + b"\xff" + b[21:], "header is damaged"),
    "oversized field": (lambda b: with_field(b, 12, "<I", 10**8), "exceeds"),
    "manifest altered": (lambda b: b.replace(b'"counter":1', b'"counter":9'), "altered"),
    "image altered": (lambda b: b[:-1] + bytes([b[-1] ^ 1]), "image SHA-256 does not match"),
}


@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_verify_cli_one_line_error_and_nonzero_exit(sample, tmp_path: Path, case: str) -> None:
    blob, _, project = sample
    damage, message = CLI_CASES[case]
    bad = tmp_path / "bad.mpseal"
    bad.write_bytes(damage(blob))
    res = run_mpseal("verify", bad, "-C", project)
    assert res.returncode == 3
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], res.stderr
    assert res.stdout == ""


def test_verify_cli_unknown_key_and_wrong_board(sample, tmp_path: Path) -> None:
    blob, _, project = sample
    other = tmp_path / "other"
    assert run_mpseal("init", other, "--board", "unix").returncode == 0
    art = tmp_path / "a.mpseal"
    art.write_bytes(blob)
    res = run_mpseal("verify", art, "-C", other)
    assert res.returncode == 3 and "signed by unknown key" in res.stderr
    res = run_mpseal("verify", art, "-C", project, "--board", "rp2")
    assert res.returncode == 3 and "not 'rp2'" in res.stderr
    ok = run_mpseal("verify", art, "-C", project, "--json")
    assert ok.returncode == 0 and '"ok": true' in ok.stdout


PARSERS = {
    "artifact": artifact.decode,
    "manifest": manifest.parse,
    "trust root": trustroot.parse,
    "romfs": romfs.read,
    "envelope": lambda b: envelope.decode(b, b"MPSR", "doc", 4096, 8),
    "config": lambda b: config.parse(b.decode("utf-8", "replace")),
}


@pytest.mark.parametrize("name", sorted(PARSERS))
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=2048))
def test_random_bytes_raise_only_mpseal_errors(name: str, data: bytes) -> None:
    try:
        PARSERS[name](data)
    except MpsealError:
        pass


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=8),
    cut=st.integers(0, 10**6),
)
def test_mutated_artifacts_raise_only_mpseal_errors(sample, edits, cut) -> None:
    blob, root, _ = sample
    bad = bytearray(blob)
    for pos, value in edits:
        bad[pos % len(bad)] = value
    bad = bad[: max(1, cut % (len(bad) + 1))]
    try:
        artifact.verify(bytes(bad), root, board="unix")
    except MpsealError:
        pass


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=4)
)
def test_mutated_images_read_cleanly(sample, edits) -> None:
    blob, _, _ = sample
    image = bytearray(artifact.decode(blob).image)
    for pos, value in edits:
        image[pos % len(image)] = value
    try:
        romfs.read(bytes(image))
    except FormatError:
        pass


@settings(max_examples=60, deadline=None)
@given(
    st.dictionaries(
        st.lists(
            st.from_regex(r"[a-z_][a-z0-9_.-]{0,11}", fullmatch=True), min_size=1, max_size=3
        ).map("/".join),
        st.binary(max_size=300),
        min_size=1,
        max_size=12,
    )
)
def test_romfs_writer_matches_mpremote_and_reads_back(files: dict[str, bytes]) -> None:
    from mpremote.romfs import VfsRomWriter

    from mpseal.errors import FormatError as FE

    try:
        image = romfs.write(files)
    except FE:  # a name that is both a file and a folder
        return
    # mpremote's writer is the reference for the format: same tree, same bytes.
    ref = VfsRomWriter()

    def emit(node: dict, prefix: str) -> None:
        names = sorted({p[len(prefix) :].split("/")[0] for p in files if p.startswith(prefix)})
        for name in names:
            path = prefix + name
            if path in files:
                ref.mkfile(name, files[path])
            else:
                ref.opendir(name)
                emit(node, path + "/")
                ref.closedir()

    emit({}, "")
    assert image == ref.finalise()
    assert {f.path: f.data for f in romfs.read(image)} == files


@pytest.mark.parametrize("bad", ["1.0\n", "1.0\r", "1.0\n\n", "1 0", "\n"])
def test_versions_and_names_are_matched_whole(bad: str) -> None:
    """A trailing newline must not slip past a pattern ("$" matches before one)."""
    for check in (manifest.check_version, manifest.check_app_name, manifest.check_file_name):
        with pytest.raises(FormatError):
            check(bad)
    with pytest.raises(FormatError):
        manifest.check_version("1" * 33)
