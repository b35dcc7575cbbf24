"""The pieces that decide where an image is and whether it may be fetched: address policy, opt-out
headers, tar member URIs, `data:` URIs, Hugging Face image features, content-addressed staging."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pyarrow as pa
import pytest

from vlmbatch.media.http import is_public_address, opted_out
from vlmbatch.media.shards import TarMember, parse_member_uri
from vlmbatch.media.staging import Stager
from vlmbatch.media.stores import ObjectStores
from vlmbatch.producer.sources.locations import decode_data_uri, resolve_image_ref
from vlmbatch.producer.sources.parquet import embedded_image_columns


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "0.0.0.0", "::1", "fe80::1%eth0",
     "fc00::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1", "100.64.0.1", "224.0.0.1"],
)  # fmt: skip
def test_private_loopback_link_local_and_mapped_addresses_are_not_public(address: str) -> None:
    assert not is_public_address(address)


@pytest.mark.parametrize("address", ["93.184.215.14", "2606:4700::6810:84e5", "8.8.8.8"])
def test_global_addresses_are_public(address: str) -> None:
    assert is_public_address(address)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (["noai"], True),
        (["noindex, NoImageAI"], True),
        (["vlmbatch: noai"], True),
        (["*: noai"], True),
        (["otherbot: noai"], False),
        (["noindex, nofollow"], False),
        ([], False),
    ],
)
def test_x_robots_tag_opts_out_for_every_robot_or_ours(values: list[str], expected: bool) -> None:
    assert opted_out(values, "vlmbatch/0.1 (+https://example.org)") is expected


def test_a_tar_member_uri_round_trips_any_shard_name() -> None:
    member = TarMember(shard="s3://bucket/odd #name&x=1.tar", name="dir/000001.left.jpg", offset=1536, size=42)
    assert parse_member_uri(member.uri()) == member


@pytest.mark.parametrize("uri", ["tar+s3://b/k.tar", "tar+s3://b/k.tar#offset=1", "tar+#offset=1&size=2"])
def test_a_malformed_tar_member_uri_is_refused(uri: str) -> None:
    with pytest.raises(ValueError):
        parse_member_uri(uri)


def test_data_uris_decode_base64_and_percent_encoded_payloads() -> None:
    assert decode_data_uri("data:image/png;base64," + base64.b64encode(b"\x89PNG").decode()) == b"\x89PNG"
    assert decode_data_uri("data:,a%20b") == b"a b"
    with pytest.raises(ValueError, match="without a comma"):
        decode_data_uri("data:image/png;base64")


def test_a_data_uri_is_staged_by_its_content_hash_once(tmp_path: Path) -> None:
    stager = Stager(str(tmp_path / "staged"), stores=ObjectStores())
    uri = "data:image/png;base64," + base64.b64encode(b"image bytes").decode()
    first = resolve_image_ref(uri, base_uri=str(tmp_path / "m.jsonl"), stager=stager)
    again = Stager(str(tmp_path / "staged"), stores=ObjectStores()).stage(b"image bytes")
    digest = hashlib.sha256(b"image bytes").hexdigest()
    assert first == again == (tmp_path / "staged" / "sha256" / digest[:2] / digest).as_uri()
    assert [p.name for p in (tmp_path / "staged").rglob("*") if p.is_file()] == [digest]


def test_urls_pass_through_and_relative_paths_stay_inside_the_sources_folder(tmp_path: Path) -> None:
    base = str(tmp_path / "m.jsonl")
    assert resolve_image_ref("https://example.org/a.jpg", base_uri=base, stager=None) == "https://example.org/a.jpg"
    assert resolve_image_ref("a/b.jpg", base_uri=base, stager=None) == (tmp_path / "a" / "b.jpg").as_uri()
    assert resolve_image_ref("x.jpg", base_uri="s3://bucket/dir/m.jsonl", stager=None) == "s3://bucket/dir/x.jpg"
    with pytest.raises(ValueError, match="leads outside"):
        resolve_image_ref("../../etc/passwd", base_uri=base, stager=None)
    with pytest.raises(ValueError, match="need a staging root"):
        resolve_image_ref("data:,x", base_uri=base, stager=None)


def test_image_columns_are_found_by_type_and_by_the_huggingface_metadata() -> None:
    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    features = {"scan": {"_type": "Image"}, "pages": {"_type": "Sequence", "feature": {"_type": "Image"}}}
    schema = pa.schema(
        [("photo", image), ("gallery", pa.list_(image)), ("scan", pa.string()), ("pages", pa.list_(pa.string())),
         ("question", pa.string()), ("blob", pa.binary())],
        metadata={"huggingface": json.dumps({"info": {"features": features}})},
    )  # fmt: skip
    assert embedded_image_columns(schema) == ["photo", "gallery", "scan", "pages", "blob"]
