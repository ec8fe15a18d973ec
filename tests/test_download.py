"""Tests of g2sd_lib.pipeline.download against a local HTTP server and file:// URLs (never the internet)."""

import hashlib
import http.server
import json
import socket
import threading
import time
from pathlib import Path

import pytest

from g2sd_lib.pipeline import download as dl

PAYLOAD = bytes(range(256)) * 1000  # 256 kB, several chunks at the chunk size used below
CHUNK = 64 * 1024


class _RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves ``server.root``; honours ``Range: bytes=N-`` unless ``server.honor_range`` is off.

    ``server.truncate_next`` makes the next response promise the whole file but stop halfway,
    as a dropped connection would.
    """

    def do_GET(self):
        srv = self.server
        srv.requests.append((self.path, self.headers.get("Range")))
        path = srv.root / self.path.lstrip("/")
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        rng = self.headers.get("Range")
        if rng and srv.honor_range:
            start = int(rng.removeprefix("bytes=").split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            data = data[start:]
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if srv.truncate_next:
            srv.truncate_next = False
            data = data[: len(data) // 2]
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "served"
    root.mkdir()
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RangeHandler)
    srv.root, srv.requests, srv.honor_range, srv.truncate_next = root, [], True, False
    srv.url = lambda name: f"http://127.0.0.1:{srv.server_address[1]}/{name}"
    thread = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join()


def _serve(server, name="ckpt.pth", data=PAYLOAD):
    (server.root / name).write_bytes(data)
    return server.url(name)


def _sha(data):
    return hashlib.sha256(data).hexdigest()


def _md5(data):
    return hashlib.md5(data).hexdigest()


def test_file_url_and_plain_path_verify_sha256(tmp_path):
    src = tmp_path / "src.pth"
    src.write_bytes(PAYLOAD)
    out = dl.download(src.as_uri(), tmp_path / "a" / "ckpt.pth", sha256=_sha(PAYLOAD),
                      progress=False, chunk_size=CHUNK)
    assert out.read_bytes() == PAYLOAD
    out = dl.download(str(src), tmp_path / "b.pth", sha256=_sha(PAYLOAD), progress=False)
    assert out.read_bytes() == PAYLOAD
    with pytest.raises(dl.ChecksumError):
        dl.download(src.as_uri(), tmp_path / "c.pth", sha256="0" * 64, progress=False)
    assert not (tmp_path / "c.pth").exists() and not (tmp_path / "c.pth.part").exists()


def test_http_download(server, tmp_path):
    dest = tmp_path / "ckpt.pth"
    out = dl.download(_serve(server), dest, progress=True, chunk_size=CHUNK)
    assert out == dest and dest.read_bytes() == PAYLOAD
    assert not (tmp_path / "ckpt.pth.part").exists()
    assert server.requests == [("/ckpt.pth", None)]


def test_md5_prefix_accepted(server, tmp_path):
    out = dl.download(_serve(server), tmp_path / "ckpt.pth", md5_prefix=_md5(PAYLOAD)[:6],
                      progress=False)
    assert out.read_bytes() == PAYLOAD


def test_md5_prefix_rejected_leaves_nothing(server, tmp_path):
    url, dest = _serve(server), tmp_path / "ckpt.pth"
    wrong = "000000" if not _md5(PAYLOAD).startswith("000000") else "ffffff"
    with pytest.raises(dl.ChecksumError) as info:
        dl.download(url, dest, md5_prefix=wrong, progress=False)
    msg = str(info.value)
    assert url in msg and wrong in msg and _md5(PAYLOAD)[:6] in msg
    assert not dest.exists() and not (tmp_path / "ckpt.pth.part").exists()


def test_resume_sends_range(server, tmp_path):
    dest, half = tmp_path / "ckpt.pth", len(PAYLOAD) // 2
    (tmp_path / "ckpt.pth.part").write_bytes(PAYLOAD[:half])
    dl.download(_serve(server), dest, sha256=_sha(PAYLOAD), progress=False, chunk_size=CHUNK)
    assert server.requests == [("/ckpt.pth", f"bytes={half}-")]
    assert dest.read_bytes() == PAYLOAD


def test_server_ignoring_range_restarts(server, tmp_path):
    server.honor_range = False
    dest = tmp_path / "ckpt.pth"
    (tmp_path / "ckpt.pth.part").write_bytes(PAYLOAD[:1000])
    dl.download(_serve(server), dest, sha256=_sha(PAYLOAD), progress=False, chunk_size=CHUNK)
    assert server.requests[0][1] == "bytes=1000-"
    assert dest.read_bytes() == PAYLOAD


def test_complete_part_is_not_retransmitted(server, tmp_path):
    dest = tmp_path / "ckpt.pth"
    (tmp_path / "ckpt.pth.part").write_bytes(PAYLOAD)
    dl.download(_serve(server), dest, sha256=_sha(PAYLOAD), progress=False)
    assert server.requests == [("/ckpt.pth", f"bytes={len(PAYLOAD)}-")]
    assert dest.read_bytes() == PAYLOAD


def test_interrupted_transfer_keeps_part_then_resumes(server, tmp_path):
    url, dest, part = _serve(server), tmp_path / "ckpt.pth", tmp_path / "ckpt.pth.part"
    server.truncate_next = True
    with pytest.raises(dl.DownloadError, match="resume"):
        dl.download(url, dest, progress=False, chunk_size=CHUNK)
    assert not dest.exists() and part.read_bytes() == PAYLOAD[: len(PAYLOAD) // 2]
    dl.download(url, dest, sha256=_sha(PAYLOAD), progress=False, chunk_size=CHUNK)
    assert server.requests[-1][1] == f"bytes={len(PAYLOAD) // 2}-"
    assert dest.read_bytes() == PAYLOAD and not part.exists()


def test_existing_verified_dest_not_refetched(server, tmp_path):
    dest = tmp_path / "ckpt.pth"
    dest.write_bytes(PAYLOAD)
    dl.download(_serve(server), dest, sha256=_sha(PAYLOAD), progress=False)
    assert server.requests == []


def test_existing_corrupt_dest_is_refetched(server, tmp_path):
    dest = tmp_path / "ckpt.pth"
    dest.write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="fails verification"):
        dl.download(_serve(server), dest, sha256=_sha(PAYLOAD), progress=False)
    assert dest.read_bytes() == PAYLOAD and len(server.requests) == 1


def test_hash_record_created_then_enforced(server, tmp_path):
    url, record = _serve(server), tmp_path / "hashes.json"
    dl.download(url, tmp_path / "a" / "ckpt.pth", hash_record=record, progress=False)
    entry = json.loads(record.read_text())["ckpt.pth"]
    assert entry == dict(sha256=_sha(PAYLOAD), md5=_md5(PAYLOAD), size=len(PAYLOAD), url=url)

    tampered = PAYLOAD[:-1] + b"\x00"
    _serve(server, data=tampered)
    with pytest.raises(dl.ChecksumError, match=_sha(tampered)):
        dl.download(url, tmp_path / "b" / "ckpt.pth", hash_record=record, progress=False)
    assert not (tmp_path / "b" / "ckpt.pth").exists()
    assert json.loads(record.read_text())["ckpt.pth"] == entry


def test_unreachable_url_raises_download_error(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dest = tmp_path / "ckpt.pth"
    start = time.monotonic()
    with pytest.raises(dl.DownloadError) as info:
        dl.download(f"http://127.0.0.1:{port}/ckpt.pth", dest, progress=False, timeout=5)
    assert time.monotonic() - start < 5
    assert str(dest) in str(info.value) and "\n" not in str(info.value)
    assert not dest.exists()


def test_fetch_official_md5_prefix(tmp_path, monkeypatch):
    name = "mae_finetuned_vit_base.pth"
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    fake = b"not the MAE checkpoint"
    assert not _md5(fake).startswith("1b25e9")
    (mirror / name).write_bytes(fake)
    with pytest.raises(dl.ChecksumError, match="1b25e9"):
        dl.fetch_official(name, tmp_path / "ckpt", base_url=mirror.as_uri(), progress=False)
    assert not (tmp_path / "ckpt" / name).exists()

    entry = dict(dl.OFFICIAL_CHECKPOINTS[name], md5_prefix=_md5(fake)[:6])
    monkeypatch.setitem(dl.OFFICIAL_CHECKPOINTS, name, entry)
    out = dl.fetch_official(name, tmp_path / "ckpt", base_url=mirror.as_uri() + "/", progress=False)
    assert out == tmp_path / "ckpt" / name and out.read_bytes() == fake


def test_fetch_official_unknown_name(tmp_path):
    with pytest.raises(KeyError, match="mae_pretrain_vit_base_full.pth"):
        dl.fetch_official("mae_vit_tiny.pth", tmp_path)


def test_official_table():
    teachers = dl.OFFICIAL_CHECKPOINTS
    assert teachers["mae_pretrain_vit_base.pth"]["md5_prefix"] == "8cad7c"
    assert teachers["mae_finetuned_vit_base.pth"]["md5_prefix"] == "1b25e9"
    assert teachers["mae_pretrain_vit_base_full.pth"]["md5_prefix"] is None
    for name, info in teachers.items():
        assert info["url"].startswith("https://dl.fbaipublicfiles.com/mae/")
        assert Path(info["url"]).name == name


def test_keyboard_interrupt_leaves_part_not_dest(server, tmp_path, monkeypatch):
    class _InterruptingBar(dl.tqdm):
        def update(self, n=1):
            super().update(n)
            raise KeyboardInterrupt

    monkeypatch.setattr(dl, "tqdm", _InterruptingBar)
    dest = tmp_path / "ckpt.pth"
    with pytest.raises(KeyboardInterrupt):
        dl.download(_serve(server), dest, progress=False, chunk_size=CHUNK)
    assert not dest.exists()
    assert (tmp_path / "ckpt.pth.part").read_bytes() == PAYLOAD[:CHUNK]


def test_copy_placed_by_hand_is_recorded_on_first_use_then_enforced(server, tmp_path):
    # the offline route: DownloadError says to save the file by hand; nothing is published to check
    # it against, so its sha256 is pinned on first use, as a first fetch would pin it
    url, record, dest = _serve(server), tmp_path / "hashes.json", tmp_path / "ckpt.pth"
    dest.write_bytes(PAYLOAD)
    dl.download(url, dest, hash_record=record, progress=False)
    assert server.requests == []
    assert json.loads(record.read_text())["ckpt.pth"] == dict(sha256=_sha(PAYLOAD), md5=_md5(PAYLOAD),
                                                             size=len(PAYLOAD), url=url)
    dest.write_bytes(b"another copy")  # later replaced: refused, and refetched from the source
    with pytest.warns(UserWarning, match="fails verification"):
        dl.download(url, dest, hash_record=record, progress=False)
    assert dest.read_bytes() == PAYLOAD and len(server.requests) == 1
