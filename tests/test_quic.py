"""QUIC Initial decryption and handshake extraction: RFC vectors, hand-made flows, corpus, bench.

* RFC 9001 appendix A and RFC 9369 appendix A: the published keys, packets
  and payloads (test vectors, copied as published) must come out exactly,
  both ways (decrypting the protected packet, and protecting the plaintext).
* Hand-made flows built with :func:`residency_monitor.quic.protect_initial`:
  CRYPTO frames out of order, overlapping and split over Initials, Retry,
  Version Negotiation, HelloRetryRequest, unknown versions, connection close.
* Golden tests over the QUIC captures of ``../shared/corpus`` against tshark's
  oracle, and the QUIC flows of the bench generator against its truth file.
"""

from __future__ import annotations

import ipaddress
import time
from pathlib import Path

import pytest
from conftest import CORPUS, oracle
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from test_tls import (
    alpn_ext,
    client_hello_body,
    ext,
    hx,
    message,
    server_hello_body,
    sni_ext,
    u16s,
    v16,
    versions_ext,
)

from residency_monitor import quic, tls
from residency_monitor.capture.files import open_capture
from residency_monitor.decode import decode, key_fields
from residency_monitor.fingerprint import ja4
from residency_monitor.quic import QUIC_V1, QUIC_V2, QuicHandshake


def _hex(text: str) -> bytes:
    return bytes.fromhex("".join(text.split()))


# ---------------------------------------------------------------------------
# Published test vectors
# ---------------------------------------------------------------------------

# RFC 9001 Appendix A (QUIC version 1). All values hexadecimal.
RFC9001_DCID = "8394c8f03e515708"
RFC9001_CLIENT_SECRET = "c00cf151ca5be075ed0ebfb5c80323c4 2d6b7db67881289af4008f1f6c357aea"
RFC9001_CLIENT_KEY = "1f369613dd76d5467730efcbe3b1a22d"
RFC9001_CLIENT_IV = "fa044b2f42a3fd3b46fb255c"
RFC9001_CLIENT_HP = "9f50449e04a0e810283a1e9933adedd2"
RFC9001_SERVER_SECRET = "3c199828fd139efd216c155ad844cc81 fb82fa8d7446fa7d78be803acdda951b"
RFC9001_SERVER_KEY = "cf3a5331653c364c88f0f379b6067e37"
RFC9001_SERVER_IV = "0ac1493ca1905853b0bba03e"
RFC9001_SERVER_HP = "c206b8d9b9f0f37644430b490eeaa314"

# A.2: the client's CRYPTO frame (the payload is this plus PADDING up to 1162 bytes)
RFC9001_CLIENT_CRYPTO = """
060040f1010000ed0303ebf8fa56f129 39b9584a3896472ec40bb863cfd3e868
04fe3a47f06a2b69484c000004130113 02010000c000000010000e00000b6578
616d706c652e636f6dff01000100000a 00080006001d00170018001000070005
04616c706e0005000501000000000033 00260024001d00209370b2c9caa47fba
baf4559fedba753de171fa71f50f1ce1 5d43e994ec74d748002b000302030400
0d0010000e0403050306030203080408 050806002d00020101001c0002400100
3900320408ffffffffffffffff050480 00ffff07048000ffff08011001048000
75300901100f088394c8f03e51570806 048000ffff
"""
RFC9001_CLIENT_HEADER = "c300000001088394c8f03e5157080000449e00000002"
RFC9001_CLIENT_SAMPLE = "d1b1c98dd7689fb8ec11d242b123dc9b"
RFC9001_CLIENT_MASK = "437b9aec36"
RFC9001_CLIENT_PACKET = """
c000000001088394c8f03e5157080000 449e7b9aec34d1b1c98dd7689fb8ec11
d242b123dc9bd8bab936b47d92ec356c 0bab7df5976d27cd449f63300099f399
1c260ec4c60d17b31f8429157bb35a12 82a643a8d2262cad67500cadb8e7378c
8eb7539ec4d4905fed1bee1fc8aafba1 7c750e2c7ace01e6005f80fcb7df6212
30c83711b39343fa028cea7f7fb5ff89 eac2308249a02252155e2347b63d58c5
457afd84d05dfffdb20392844ae81215 4682e9cf012f9021a6f0be17ddd0c208
4dce25ff9b06cde535d0f920a2db1bf3 62c23e596d11a4f5a6cf3948838a3aec
4e15daf8500a6ef69ec4e3feb6b1d98e 610ac8b7ec3faf6ad760b7bad1db4ba3
485e8a94dc250ae3fdb41ed15fb6a8e5 eba0fc3dd60bc8e30c5c4287e53805db
059ae0648db2f64264ed5e39be2e20d8 2df566da8dd5998ccabdae053060ae6c
7b4378e846d29f37ed7b4ea9ec5d82e7 961b7f25a9323851f681d582363aa5f8
9937f5a67258bf63ad6f1a0b1d96dbd4 faddfcefc5266ba6611722395c906556
be52afe3f565636ad1b17d508b73d874 3eeb524be22b3dcbc2c7468d54119c74
68449a13d8e3b95811a198f3491de3e7 fe942b330407abf82a4ed7c1b311663a
c69890f4157015853d91e923037c227a 33cdd5ec281ca3f79c44546b9d90ca00
f064c99e3dd97911d39fe9c5d0b23a22 9a234cb36186c4819e8b9c5927726632
291d6a418211cc2962e20fe47feb3edf 330f2c603a9d48c0fcb5699dbfe58964
25c5bac4aee82e57a85aaf4e2513e4f0 5796b07ba2ee47d80506f8d2c25e50fd
14de71e6c418559302f939b0e1abd576 f279c4b2e0feb85c1f28ff18f58891ff
ef132eef2fa09346aee33c28eb130ff2 8f5b766953334113211996d20011a198
e3fc433f9f2541010ae17c1bf202580f 6047472fb36857fe843b19f5984009dd
c324044e847a4f4a0ab34f719595de37 252d6235365e9b84392b061085349d73
203a4a13e96f5432ec0fd4a1ee65accd d5e3904df54c1da510b0ff20dcc0c77f
cb2c0e0eb605cb0504db87632cf3d8b4 dae6e705769d1de354270123cb11450e
fc60ac47683d7b8d0f811365565fd98c 4c8eb936bcab8d069fc33bd801b03ade
a2e1fbc5aa463d08ca19896d2bf59a07 1b851e6c239052172f296bfb5e724047
90a2181014f3b94a4e97d117b4381303 68cc39dbb2d198065ae3986547926cd2
162f40a29f0c3c8745c0f50fba3852e5 66d44575c29d39a03f0cda721984b6f4
40591f355e12d439ff150aab7613499d bd49adabc8676eef023b15b65bfc5ca0
6948109f23f350db82123535eb8a7433 bdabcb909271a6ecbcb58b936a88cd4e
8f2e6ff5800175f113253d8fa9ca8885 c2f552e657dc603f252e1a8e308f76f0
be79e2fb8f5d5fbbe2e30ecadd220723 c8c0aea8078cdfcb3868263ff8f09400
54da48781893a7e49ad5aff4af300cd8 04a6b6279ab3ff3afb64491c85194aab
760d58a606654f9f4400e8b38591356f bf6425aca26dc85244259ff2b19c41b9
f96f3ca9ec1dde434da7d2d392b905dd f3d1f9af93d1af5950bd493f5aa731b4
056df31bd267b6b90a079831aaf579be 0a39013137aac6d404f518cfd4684064
7e78bfe706ca4cf5e9c5453e9f7cfd2b 8b4c8d169a44e55c88d4a9a7f9474241
e221af44860018ab0856972e194cd934
"""

# A.3: the server's payload (ACK + CRYPTO, no PADDING), header and protected packet
RFC9001_SERVER_PAYLOAD = """
02000000000600405a020000560303ee fce7f7b37ba1d1632e96677825ddf739
88cfc79825df566dc5430b9a045a1200 130100002e00330024001d00209d3c94
0d89690b84d08a60993c144eca684d10 81287c834d5311bcf32bb9da1a002b00
020304
"""
RFC9001_SERVER_HEADER = "c1000000010008f067a5502a4262b50040750001"
RFC9001_SERVER_SAMPLE = "2cd0991cd25b0aac406a5816b6394100"
RFC9001_SERVER_MASK = "2ec0d8356a"
RFC9001_SERVER_PACKET = """
cf000000010008f067a5502a4262b500 4075c0d95a482cd0991cd25b0aac406a
5816b6394100f37a1c69797554780bb3 8cc5a99f5ede4cf73c3ec2493a1839b3
dbcba3f6ea46c5b7684df3548e7ddeb9 c3bf9c73cc3f3bded74b562bfb19fb84
022f8ef4cdd93795d77d06edbb7aaf2f 58891850abbdca3d20398c276456cbc4
2158407dd074ee
"""
# A.4: a Retry answering A.2 (its tag covers the client's DCID 8394c8f03e515708)
RFC9001_RETRY = """
ff000000010008f067a5502a4262b574 6f6b656e04a265ba2eff4d829058fb3f
0f2496ba
"""

# RFC 9369 Appendix A (QUIC version 2), same DCID and same CRYPTO frame / server payload.
RFC9369_CLIENT_SECRET = "14ec9d6eb9fd7af83bf5a668bc17a7e2 83766aade7ecd0891f70f9ff7f4bf47b"
RFC9369_CLIENT_KEY = "8b1a0bc121284290a29e0971b5cd045d"
RFC9369_CLIENT_IV = "91f73e2351d8fa91660e909f"
RFC9369_CLIENT_HP = "45b95e15235d6f45a6b19cbcb0294ba9"
RFC9369_SERVER_SECRET = "0263db1782731bf4588e7e4d93b74639 07cb8cd8200b5da55a8bd488eafc37c1"
RFC9369_SERVER_KEY = "82db637861d55e1d011f19ea71d5d2a7"
RFC9369_SERVER_IV = "dd13c276499c0249d3310652"
RFC9369_SERVER_HP = "edf6d05c83121201b436e16877593c3a"
RFC9369_CLIENT_HEADER = "d36b3343cf088394c8f03e5157080000449e00000002"
RFC9369_CLIENT_SAMPLE = "ffe67b6abcdb4298b485dd04de806071"
RFC9369_CLIENT_MASK = "94a0c95e80"
RFC9369_CLIENT_PACKET = """
d76b3343cf088394c8f03e5157080000 449ea0c95e82ffe67b6abcdb4298b485
dd04de806071bf03dceebfa162e75d6c 96058bdbfb127cdfcbf903388e99ad04
9f9a3dd4425ae4d0992cfff18ecf0fdb 5a842d09747052f17ac2053d21f57c5d
250f2c4f0e0202b70785b7946e992e58 a59ac52dea6774d4f03b55545243cf1a
12834e3f249a78d395e0d18f4d766004 f1a2674802a747eaa901c3f10cda5500
cb9122faa9f1df66c392079a1b40f0de 1c6054196a11cbea40afb6ef5253cd68
18f6625efce3b6def6ba7e4b37a40f77 32e093daa7d52190935b8da58976ff33
12ae50b187c1433c0f028edcc4c2838b 6a9bfc226ca4b4530e7a4ccee1bfa2a3
d396ae5a3fb512384b2fdd851f784a65 e03f2c4fbe11a53c7777c023462239dd
6f7521a3f6c7d5dd3ec9b3f233773d4b 46d23cc375eb198c63301c21801f6520
bcfb7966fc49b393f0061d974a2706df 8c4a9449f11d7f3d2dcbb90c6b877045
636e7c0c0fe4eb0f697545460c806910 d2c355f1d253bc9d2452aaa549e27a1f
ac7cf4ed77f322e8fa894b6a83810a34 b361901751a6f5eb65a0326e07de7c12
16ccce2d0193f958bb3850a833f7ae43 2b65bc5a53975c155aa4bcb4f7b2c4e5
4df16efaf6ddea94e2c50b4cd1dfe060 17e0e9d02900cffe1935e0491d77ffb4
fdf85290fdd893d577b1131a610ef6a5 c32b2ee0293617a37cbb08b847741c3b
8017c25ca9052ca1079d8b78aebd4787 6d330a30f6a8c6d61dd1ab5589329de7
14d19d61370f8149748c72f132f0fc99 f34d766c6938597040d8f9e2bb522ff9
9c63a344d6a2ae8aa8e51b7b90a4a806 105fcbca31506c446151adfeceb51b91
abfe43960977c87471cf9ad4074d30e1 0d6a7f03c63bd5d4317f68ff325ba3bd
80bf4dc8b52a0ba031758022eb025cdd 770b44d6d6cf0670f4e990b22347a7db
848265e3e5eb72dfe8299ad7481a4083 22cac55786e52f633b2fb6b614eaed18
d703dd84045a274ae8bfa73379661388 d6991fe39b0d93debb41700b41f90a15
c4d526250235ddcd6776fc77bc97e7a4 17ebcb31600d01e57f32162a8560cacc
7e27a096d37a1a86952ec71bd89a3e9a 30a2a26162984d7740f81193e8238e61
f6b5b984d4d3dfa033c1bb7e4f0037fe bf406d91c0dccf32acf423cfa1e70710
10d3f270121b493ce85054ef58bada42 310138fe081adb04e2bd901f2f13458b
3d6758158197107c14ebb193230cd115 7380aa79cae1374a7c1e5bbcb80ee23e
06ebfde206bfb0fcbc0edc4ebec30966 1bdd908d532eb0c6adc38b7ca7331dce
8dfce39ab71e7c32d318d136b6100671 a1ae6a6600e3899f31f0eed19e3417d1
34b90c9058f8632c798d4490da498730 7cba922d61c39805d072b589bd52fdf1
e86215c2d54e6670e07383a27bbffb5a ddf47d66aa85a0c6f9f32e59d85a44dd
5d3b22dc2be80919b490437ae4f36a0a e55edf1d0b5cb4e9a3ecabee93dfc6e3
8d209d0fa6536d27a5d6fbb17641cde2 7525d61093f1b28072d111b2b4ae5f89
d5974ee12e5cf7d5da4d6a31123041f3 3e61407e76cffcdcfd7e19ba58cf4b53
6f4c4938ae79324dc402894b44faf8af bab35282ab659d13c93f70412e85cb19
9a37ddec600545473cfb5a05e08d0b20 9973b2172b4d21fb69745a262ccde96b
a18b2faa745b6fe189cf772a9f84cbfc
"""
RFC9369_SERVER_HEADER = "d16b3343cf0008f067a5502a4262b50040750001"
RFC9369_SERVER_SAMPLE = "6f05d8a4398c47089698baeea26b91eb"
RFC9369_SERVER_MASK = "4dd92e91ea"
RFC9369_SERVER_PACKET = """
dc6b3343cf0008f067a5502a4262b500 4075d92faaf16f05d8a4398c47089698
baeea26b91eb761d9b89237bbf872630 17915358230035f7fd3945d88965cf17
f9af6e16886c61bfc703106fbaf3cb4c fa52382dd16a393e42757507698075b2
c984c707f0a0812d8cd5a6881eaf21ce da98f4bd23f6fe1a3e2c43edd9ce7ca8
4bed8521e2e140
"""
RFC9369_RETRY = """
cf6b3343cf0008f067a5502a4262b574 6f6b656ec8646ce8bfe33952d9555436
65dcc7b6
"""

DCID = _hex(RFC9001_DCID)
SERVER_SCID = _hex("f067a5502a4262b5")
CLIENT_PAYLOAD = _hex(RFC9001_CLIENT_CRYPTO) + bytes(1162 - len(_hex(RFC9001_CLIENT_CRYPTO)))
SERVER_PAYLOAD = _hex(RFC9001_SERVER_PAYLOAD)
RFC = {  # version -> the published values of its appendix A
    QUIC_V1: {k[len("RFC9001_"):]: v for k, v in globals().items() if k.startswith("RFC9001_")},
    QUIC_V2: {k[len("RFC9369_"):]: v for k, v in globals().items() if k.startswith("RFC9369_")},
}
VERSIONS = pytest.mark.parametrize("version", [QUIC_V1, QUIC_V2], ids=["v1", "v2"])


@VERSIONS
def test_initial_keys_match_the_rfc(version: int) -> None:
    vec = RFC[version]
    client, server = quic.initial_keys(DCID, version)
    assert client.secret == _hex(vec["CLIENT_SECRET"])
    assert (client.key, client.iv, client.hp) == (
        _hex(vec["CLIENT_KEY"]), _hex(vec["CLIENT_IV"]), _hex(vec["CLIENT_HP"]))
    assert server.secret == _hex(vec["SERVER_SECRET"])
    assert (server.key, server.iv, server.hp) == (
        _hex(vec["SERVER_KEY"]), _hex(vec["SERVER_IV"]), _hex(vec["SERVER_HP"]))
    # the header protection masks of the worked examples
    assert client.mask(_hex(vec["CLIENT_SAMPLE"]))[:5] == _hex(vec["CLIENT_MASK"])
    assert server.mask(_hex(vec["SERVER_SAMPLE"]))[:5] == _hex(vec["SERVER_MASK"])


def test_hkdf_label_layout_of_rfc9001_a1() -> None:
    # HkdfLabel for "client in" is 00200f "tls13 client in" 00; expanding the published
    # client secret with the "quic key" label gives the published key.
    secret = _hex(RFC9001_CLIENT_SECRET)
    assert quic.hkdf_expand_label(secret, b"quic key", 16) == _hex(RFC9001_CLIENT_KEY)
    assert len(quic.hkdf_expand_label(secret, b"quic key", 80)) == 80  # several HMAC blocks


@VERSIONS
def test_client_initial_decrypts_to_the_published_payload(version: int) -> None:
    vec = RFC[version]
    packet = _hex(vec["CLIENT_PACKET"])
    hdr = quic.parse_long_header(packet)
    assert hdr is not None
    assert (hdr.version, hdr.dcid, hdr.scid, hdr.packet_type, hdr.token) == (
        version, DCID, b"", "initial", b"")
    assert hdr.end == len(packet) == 1200 and hdr.end - hdr.pn_offset == 1182
    pn, payload = quic.decrypt_initial(packet, hdr, quic.initial_keys(DCID, version)[0])
    assert pn == 2
    assert payload == CLIENT_PAYLOAD
    frames = quic.parse_frames(payload)
    crypto = _hex(RFC9001_CLIENT_CRYPTO)
    assert frames.crypto == ((0, crypto[4:]),)  # type 06, offset 00, length 40f1
    assert frames.padding == 1162 - len(crypto) and frames.error is None
    ch = tls.parse_client_hello(tls.split_handshake(crypto[4:])[0][1])
    assert ch.sni == "example.com" and ch.alpn == ("alpn",) and ch.versions == (0x0304,)
    assert ch.cipher_suites == (0x1301, 0x1302) and ch.key_share_groups == (0x001D,)
    assert 0x39 in ch.extensions  # quic_transport_parameters


@VERSIONS
def test_client_initial_protection_reproduces_the_published_packet(version: int) -> None:
    vec = RFC[version]
    keys = quic.initial_keys(DCID, version)[0]
    packet = quic.protect_initial(keys, version, DCID, b"", 2, CLIENT_PAYLOAD)
    assert packet == _hex(vec["CLIENT_PACKET"])
    # the unprotected header of the example, with header protection undone by hand
    mask = keys.mask(_hex(vec["CLIENT_SAMPLE"]))
    unprotected = bytearray(packet[:22])
    unprotected[0] ^= mask[0] & 0x0F
    for i in range(4):
        unprotected[18 + i] ^= mask[1 + i]
    assert bytes(unprotected) == _hex(vec["CLIENT_HEADER"])


@VERSIONS
def test_server_initial_both_ways(version: int) -> None:
    vec = RFC[version]
    packet = _hex(vec["SERVER_PACKET"])
    keys = quic.initial_keys(DCID, version)[1]
    hdr = quic.parse_long_header(packet)
    assert hdr is not None and (hdr.dcid, hdr.scid) == (b"", SERVER_SCID)
    pn, payload = quic.decrypt_initial(packet, hdr, keys)
    assert (pn, payload) == (1, SERVER_PAYLOAD)
    assert quic.protect_initial(keys, version, b"", SERVER_SCID, 1, payload, pn_len=2) == packet
    frames = quic.parse_frames(payload)
    assert frames.acks == 1 and len(frames.crypto) == 1 and frames.error is None
    sh = tls.parse_server_hello(tls.split_handshake(frames.crypto[0][1])[0][1])
    assert (sh.version, sh.cipher_suite, sh.key_share_group) == (0x0304, 0x1301, 0x001D)


@VERSIONS
def test_retry_integrity_tag(version: int) -> None:
    packet = _hex(RFC[version]["RETRY"])
    hdr = quic.parse_long_header(packet)
    assert hdr is not None and hdr.packet_type == "retry"
    assert (hdr.scid, hdr.token) == (SERVER_SCID, b"token")
    assert quic.retry_tag_valid(packet, hdr, DCID)
    assert not quic.retry_tag_valid(packet, hdr, DCID[:-1] + b"\x00")
    tampered = packet[:-1] + bytes((packet[-1] ^ 1,))
    assert not quic.retry_tag_valid(tampered, hdr, DCID)


@VERSIONS
def test_handshake_state_reads_the_rfc_exchange(version: int) -> None:
    h = QuicHandshake()
    assert not h.feed(_hex(RFC[version]["CLIENT_PACKET"]), True)
    assert h.client_hello is not None and h.client_hello.sni == "example.com"
    assert h.feed(_hex(RFC[version]["SERVER_PACKET"]), False)
    assert h.server_hello is not None and h.server_hello.cipher_suite == 0x1301
    assert (h.version, h.initial_packets, h.error, h.retry) == (version, 1, None, False)
    assert h.original_dcid == DCID and h.stats.initial_server == 1
    assert h.feed(b"\x40" + bytes(30), True)  # done stays done, nothing more is read


# ---------------------------------------------------------------------------
# Versions, headers, packet numbers, frames
# ---------------------------------------------------------------------------

def test_version_names() -> None:
    assert quic.version_name(QUIC_V1) == "QUICv1"
    assert quic.version_name(QUIC_V2) == "QUICv2"
    assert [quic.version_name(0xFF000000 | d) for d in range(29, 35)] == [
        f"draft-{d}" for d in range(29, 35)]
    assert quic.version_name(0x12345678) == "unknown (0x12345678)"
    assert quic.version_name(0x709A50C4) == "unknown (0x709a50c4)"  # the v2 draft codepoint
    assert quic.version_name(0) == "version negotiation"


def test_draft_salts() -> None:
    # Drafts 29-32 share the draft-29 salt; drafts 33 and 34 already use the final
    # v1 salt (quicwg/base-drafts PR #4431; Wireshark's packet-quic.c agrees).
    v1 = quic.initial_keys(DCID, QUIC_V1)[0].key
    d29 = quic.initial_keys(DCID, 0xFF00001D)[0].key
    assert d29 != v1
    assert all(quic.initial_keys(DCID, 0xFF000000 | d)[0].key == d29 for d in range(29, 33))
    assert all(quic.initial_keys(DCID, 0xFF000000 | d)[0].key == v1 for d in (33, 34))
    with pytest.raises(quic.ParseError):
        quic.initial_keys(DCID, 0x12345678)


def test_packet_number_decoding_rfc9000_a3() -> None:
    assert quic.decode_packet_number(0xA82F30EA, 0x9B32, 16) == 0xA82F9B32
    assert quic.decode_packet_number(-1, 0, 8) == 0
    assert quic.decode_packet_number(0xFE, 0x01, 8) == 0x101  # wraps forward
    assert quic.decode_packet_number(0x101, 0xFF, 8) == 0xFF  # and back


def test_long_header_edge_cases() -> None:
    assert quic.parse_long_header(b"") is None
    assert quic.parse_long_header(b"\x40\x01\x02") is None  # short header
    assert quic.parse_long_header(_hex(RFC9001_CLIENT_PACKET), 1200) is None
    with pytest.raises(quic.ParseError):
        quic.parse_long_header(b"\xc0\x00\x00\x00\x01\x08")
    with pytest.raises(quic.ParseError):  # Length beyond the datagram (snaplen cut)
        quic.parse_long_header(_hex(RFC9001_CLIENT_PACKET)[:1000])
    with pytest.raises(quic.ParseError):  # v1 caps connection IDs at 20 bytes
        quic.parse_long_header(b"\xc0\x00\x00\x00\x01\x15" + bytes(21) + b"\x00\x00\x41\x00")
    vn = b"\x80\x00\x00\x00\x00\x04abcd\x02xy" + u16s(0, 1) + bytes.fromhex("6b3343cf")
    hdr = quic.parse_long_header(vn)
    assert hdr is not None and hdr.packet_type == "version_negotiation"
    assert (hdr.dcid, hdr.scid, hdr.versions) == (b"abcd", b"xy", (QUIC_V1, QUIC_V2))
    with pytest.raises(quic.ParseError):
        quic.parse_long_header(vn[:-1])
    odd = b"\xc3\x12\x34\x56\x78\x20" + bytes(32) + b"\x00" + bytes(40)
    hdr = quic.parse_long_header(odd)  # unknown version: only the invariants are read
    assert hdr is not None and hdr.packet_type == "unknown"
    assert (len(hdr.dcid), hdr.end) == (32, len(odd))


def _varint(v: int) -> bytes:
    for size, prefix in ((1, 0), (2, 0x40), (4, 0x80), (8, 0xC0)):
        if v < 1 << (8 * size - 2):
            b = v.to_bytes(size, "big")
            return bytes((b[0] | prefix,)) + b[1:]
    raise ValueError(v)


def crypto_frame(offset: int, data: bytes) -> bytes:
    return b"\x06" + _varint(offset) + _varint(len(data)) + data


def test_frames_ack_with_ranges_and_ecn_ping_close() -> None:
    ack = b"\x02" + _varint(100) + _varint(3) + _varint(2) + _varint(5) + b"\x01\x02\x03\x04"
    ack_ecn = b"\x03" + _varint(7) + b"\x00\x00\x00" + _varint(1) + _varint(2) + _varint(3)
    close = b"\x1c" + _varint(0x10A) + _varint(6) + _varint(4) + b"nope"
    payload = ack + b"\x01" + ack_ecn + crypto_frame(5, b"hello") + bytes(20) + close + bytes(3)
    f = quic.parse_frames(payload)
    assert (f.acks, f.pings, f.padding, f.error) == (2, 1, 23, None)
    assert f.crypto == ((5, b"hello"),)
    assert f.close == quic.ConnectionClose(0x10A, 6, "nope", False)
    app_close = quic.parse_frames(b"\x1d" + _varint(3) + _varint(2) + b"ok").close
    assert app_close == quic.ConnectionClose(3, None, "ok", True)


def test_frames_salvage_before_a_forbidden_frame() -> None:
    f = quic.parse_frames(crypto_frame(0, b"abc") + b"\x08\x00\x00" + crypto_frame(3, b"def"))
    assert f.crypto == ((0, b"abc"),)  # STREAM (0x08) is not allowed in an Initial
    assert f.error is not None and "0x08" in f.error
    assert quic.parse_frames(b"\x06\x00\x10abc").error is not None  # overruns the payload
    assert quic.parse_frames(b"\x02\x00\x00\x7f\xff\x00").error is not None  # absurd range count
    huge = b"\x06" + _varint((1 << 62) - 2) + _varint(5) + b"12345"
    assert quic.parse_frames(huge).error is not None  # beyond the largest stream offset


# ---------------------------------------------------------------------------
# Hand-made flows
# ---------------------------------------------------------------------------

CDCID, CSCID, SSCID = bytes.fromhex("0011223344556677"), b"\xc1\xc2", b"\x5e" * 8


def big_client_hello(sni: bytes = b"pq.example", share: int = 1216) -> bytes:
    """A ClientHello message (with header) larger than one Initial, like Chrome's ML-KEM one."""
    return message(1, client_hello_body([
        sni_ext(sni), alpn_ext(b"h3"), versions_ext(0x0304),
        ext(51, v16(u16s(0x11EC) + v16(b"\x33" * share))), ext(0x39, b"\x01\x02\x03"),
    ], suites=(0x1301, 0x1302, 0x1303)))


def server_hello_msg(hrr: bool = False) -> bytes:
    random = tls.HRR_RANDOM if hrr else bytes(range(32))
    share = u16s(0x001D) if hrr else u16s(0x001D) + v16(b"\x22" * 32)
    return message(2, server_hello_body([ext(43, u16s(0x0304)), ext(51, share)], random=random))


def client_initial(frames: bytes, pn: int, dcid: bytes = CDCID, version: int = QUIC_V1,
                   key_dcid: bytes | None = None, token: bytes = b"") -> bytes:
    keys = quic.initial_keys(key_dcid or dcid, version)[0]
    head = 1 + 4 + 1 + len(dcid) + 1 + len(CSCID) + 1 + len(token) + 2 + 4 + 16
    pad = max(0, 1200 - head - len(frames))
    return quic.protect_initial(keys, version, dcid, CSCID, pn, frames + bytes(pad), token=token)


def server_initial(frames: bytes, pn: int, key_dcid: bytes = CDCID,
                   version: int = QUIC_V1) -> bytes:
    keys = quic.initial_keys(key_dcid, version)[1]
    padded = frames + bytes(max(0, 20 - len(frames)))  # enough for a header protection sample
    return quic.protect_initial(keys, version, CSCID, SSCID, pn, padded)


def retry_packet(odcid: bytes, new_scid: bytes, version: int = QUIC_V1, good: bool = True) -> bytes:
    # Retry integrity key and nonce: RFC 9001 §5.8 (v1), RFC 9369 §3.3.3 (v2)
    key, nonce = (("be0c690b9f66575a1d766b54e368c84e", "461599d35d632bf2239825bb")
                  if version == QUIC_V1 else
                  ("8fb4b01b56ac48e260fbcbcead7ccc92", "d86969bc2d7c6d9990efb04a"))
    first = 0xF0 if version == QUIC_V1 else 0xC0  # type bits: 3 in v1, 0 in v2
    body = (bytes((first,)) + version.to_bytes(4, "big") + bytes((len(CSCID),)) + CSCID
            + bytes((len(new_scid),)) + new_scid + b"retry-token")
    tag = AESGCM(_hex(key)).encrypt(_hex(nonce), b"", bytes((len(odcid),)) + odcid + body)
    return body + (tag if good else bytes(16))


def test_client_hello_split_over_two_initials_out_of_order() -> None:
    ch = big_client_hello()
    assert len(ch) > 1200
    first, second = client_initial(crypto_frame(0, ch[:1100]), 0), client_initial(
        crypto_frame(1100, ch[1100:]), 1)
    h = QuicHandshake()
    assert not h.feed(second, True)  # the tail first: nothing to parse yet
    assert h.client_hello is None and h.initial_packets == 1
    assert not h.feed(first, True)
    assert h.client_hello is not None and h.client_hello.sni == "pq.example"
    assert h.client_hello.key_share_groups == (0x11EC,)
    assert h.feed(server_initial(crypto_frame(0, server_hello_msg()), 0), False)
    assert (h.initial_packets, h.error, h.version) == (2, None, QUIC_V1)


def test_crypto_frames_scattered_and_overlapping_within_a_packet() -> None:
    ch = big_client_hello(share=300)
    pieces = [crypto_frame(200, ch[200:400]), b"\x01", crypto_frame(0, ch[:250]), bytes(7),
              crypto_frame(380, ch[380:]), crypto_frame(100, ch[100:150])]
    h = QuicHandshake()
    h.feed(client_initial(b"".join(pieces), 0), True)
    assert h.client_hello == tls.parse_client_hello(ch[4:])
    assert h.stats.crypto_frames == 4 and h.stats.crypto_bytes_dropped == 0


def test_later_client_initials_use_the_servers_cid_but_the_original_keys() -> None:
    # After the server's first Initial the client addresses the server's SCID, yet the
    # Initial keys still come from its first DCID (RFC 9001 §5.2): nDPI PR #2278's case.
    ch = big_client_hello()
    h = QuicHandshake()
    h.feed(client_initial(crypto_frame(0, ch[:1000]), 0), True)
    h.feed(server_initial(b"\x02\x00\x00\x00\x00", 0), False)  # an ACK only
    h.feed(client_initial(crypto_frame(1000, ch[1000:]), 1, dcid=SSCID, key_dcid=CDCID), True)
    assert h.client_hello is not None and h.client_hello.sni == "pq.example"
    assert h.original_dcid == CDCID and h.stats.undecryptable == 0


def test_absurd_and_out_of_bound_offsets_are_dropped_and_counted() -> None:
    ch = big_client_hello(share=100)
    frames = (crypto_frame((1 << 62) - 11, b"x" * 10) + crypto_frame(70_000, b"y" * 50)
              + crypto_frame(65_530, b"z" * 10) + crypto_frame(0, ch))
    h = QuicHandshake()
    h.feed(client_initial(frames, 0), True)
    assert h.client_hello is not None and h.client_hello.sni == "pq.example"
    assert h.stats.crypto_bytes_dropped == 10 + 50 + 4
    small = QuicHandshake(max_crypto=200)  # a bound below the hello: it can never complete
    small.feed(client_initial(crypto_frame(0, ch), 0), True)
    assert small.client_hello is None and small.stats.crypto_bytes_dropped == len(ch) - 200
    assert small.error is not None and "does not fit" in small.error


@VERSIONS
def test_retry_moves_the_keys_to_the_retry_scid(version: int) -> None:
    ch = big_client_hello(share=100)
    new = bytes.fromhex("a1a2a3a4a5a6a7a8a9")
    h = QuicHandshake()
    h.feed(client_initial(crypto_frame(0, ch[:50]), 0, version=version), True)
    h.feed(retry_packet(CDCID, new, version, good=False), False)  # forged: ignored
    assert not h.retry and h.stats.retry_ignored == 1
    h.feed(retry_packet(CDCID, new, version), False)
    h.feed(retry_packet(CDCID, b"\x99" * 8, version), False)  # a second Retry is discarded
    assert h.retry and h.original_dcid == new and h.stats.retries == 1
    assert h.stats.retry_ignored == 2
    h.feed(client_initial(crypto_frame(0, ch), 1, dcid=new, version=version,
                          token=b"retry-token"), True)
    assert h.client_hello is not None and h.client_hello.sni == "pq.example"
    sh = server_initial(crypto_frame(0, server_hello_msg()), 0, key_dcid=new, version=version)
    assert h.feed(sh, False)
    assert h.error is None and h.initial_packets == 2 and h.version == version


def test_compatible_version_negotiation_to_v2() -> None:
    # RFC 9368/9369: the server may answer a v1 ClientHello in v2; its Initial keys use the
    # v2 salt and labels over the client's original DCID.
    h = QuicHandshake()
    h.feed(client_initial(crypto_frame(0, big_client_hello(share=64)), 0), True)
    assert h.version == QUIC_V1
    assert h.feed(server_initial(crypto_frame(0, server_hello_msg()), 0, version=QUIC_V2), False)
    assert h.version == QUIC_V2 and h.versions_seen == (QUIC_V1, QUIC_V2)


def test_version_negotiation_then_a_new_attempt() -> None:
    h = QuicHandshake()
    unknown = b"\xc0\x1a\x2a\x3a\x4a" + bytes((len(CDCID),)) + CDCID + b"\x00" + bytes(1200)
    assert not h.feed(unknown, True)  # a reserved version only provokes negotiation
    vn = b"\x80\x00\x00\x00\x00\x02" + CSCID + bytes((len(CDCID),)) + CDCID + b"\x00\x00\x00\x01"
    h.feed(vn, False)
    assert h.vn_versions == (QUIC_V1,) and h.stats.version_negotiation == 1
    other = bytes(8) + b"\x01"
    h.feed(client_initial(crypto_frame(0, big_client_hello(share=50)), 0, dcid=other), True)
    assert h.client_hello is not None and h.version == QUIC_V1 and h.original_dcid == other
    assert h.feed(server_initial(crypto_frame(0, server_hello_msg()), 0, key_dcid=other), False)
    assert h.versions_seen == (0x1A2A3A4A, QUIC_V1)


def test_unknown_version_is_reported_and_hopeless() -> None:
    h = QuicHandshake()
    pkt = b"\xc0\x12\x34\x56\x78\x08" + CDCID + b"\x00" + bytes(1180)
    assert h.feed(pkt, True)
    assert h.error == "unknown version 0x12345678" and h.version == 0x12345678
    assert h.client_hello is None and h.stats.unknown_version_packets == 1


def test_draft_29_flow() -> None:
    h = QuicHandshake()
    h.feed(client_initial(crypto_frame(0, big_client_hello(share=64)), 0, version=0xFF00001D), True)
    h.feed(server_initial(crypto_frame(0, server_hello_msg()), 0, version=0xFF00001D), False)
    assert h.done and h.version == 0xFF00001D and h.client_hello is not None


def test_hello_retry_request_then_server_hello() -> None:
    ch = big_client_hello(share=64)
    h = QuicHandshake()
    h.feed(client_initial(crypto_frame(0, ch), 0), True)
    hrr = server_hello_msg(hrr=True)
    assert not h.feed(server_initial(crypto_frame(0, hrr), 0), False)
    assert h.server_hello is not None and h.server_hello.hello_retry_request
    second = server_initial(b"\x02\x00\x00\x00\x00" + crypto_frame(len(hrr), server_hello_msg()), 1)
    assert h.feed(second, False)
    assert not h.server_hello.hello_retry_request and h.server_hello.key_share_group == 0x001D


def test_connection_close_during_the_handshake_ends_it() -> None:
    h = QuicHandshake()
    h.feed(client_initial(crypto_frame(0, big_client_hello(share=64)), 0), True)
    close = b"\x1c" + _varint(0x128) + _varint(6) + _varint(3) + b"bye"
    assert h.feed(server_initial(close, 0), False)
    assert h.close == quic.ConnectionClose(0x128, 6, "bye", False)
    assert h.error is not None and "0x128" in h.error and h.server_hello is None


def test_bad_packets_are_counted_never_raised() -> None:
    h = QuicHandshake()
    good = client_initial(crypto_frame(0, big_client_hello(share=64)), 0)
    h.feed(server_initial(crypto_frame(0, server_hello_msg()), 0), False)  # before any client
    assert h.stats.undecryptable == 1
    corrupt = good[:600] + bytes((good[600] ^ 0xFF,)) + good[601:]
    assert not h.feed(corrupt, True)
    assert h.stats.undecryptable == 2 and h.error is not None and "client" in h.error
    assert not h.feed(good[:500], True)  # cut short: the Length overruns the datagram
    assert h.stats.parse_errors == 1
    h.feed(good, True)
    assert h.client_hello is not None and h.stats.undecryptable == 2
    h.feed(b"\x41" + bytes(40), False)  # 1-RTT
    h.feed(b"", False)
    assert h.stats.short_packets == 2


def test_client_crypto_stream_that_is_no_client_hello() -> None:
    h = QuicHandshake()
    h.feed(client_initial(crypto_frame(0, server_hello_msg()), 0), True)
    assert h.client_hello is None and h.error is not None and "message 2" in h.error
    h.feed(client_initial(crypto_frame(0, message(1, b"\x03\x03")), 0), True)
    assert h.client_hello is None


def test_garbage_client_hello_is_a_parse_error() -> None:
    h = QuicHandshake()
    h.feed(client_initial(crypto_frame(0, message(1, b"\x03\x03\x00")), 0), True)
    assert h.client_hello is None and h.error is not None and h.error.startswith("ClientHello")
    assert h.stats.parse_errors == 1
    assert h.feed(server_initial(crypto_frame(0, server_hello_msg()), 0), False)


def test_a_flow_without_a_handshake_is_given_up() -> None:
    h = QuicHandshake()
    for _ in range(63):
        assert not h.feed(b"\x41" + bytes(40), True)
    assert h.feed(b"\x41" + bytes(40), True)
    assert h.error is not None and "64 datagrams" in h.error


def test_coalesced_packets_with_another_dcid_are_ignored() -> None:
    first = client_initial(crypto_frame(0, big_client_hello(share=64)), 0)[:]
    hs = b"\xe0\x00\x00\x00\x01\x08" + b"\x77" * 8 + b"\x00" + _varint(30) + bytes(30)
    h = QuicHandshake()
    h.feed(first + hs, True)
    assert h.stats.ignored_packets == 1 and h.client_hello is not None


# ---------------------------------------------------------------------------
# Corpus: the QUIC captures against tshark's oracle
# ---------------------------------------------------------------------------

Endpoints = tuple[str, int, str, int]
Datagrams = list[tuple[bytes, bool]]

QUIC_CAPTURES = [
    "zeek-chromium-115.0.5790.110-api-cirrus-com.pcap",  # CRYPTO frames reordered
    "sv-quic-frag.pcap",  # ClientHello over two Initials
    "sv-quic-retry.pcap",  # Retry (two of them; the client follows the first)
    "zeek-quicv2-echo-443.pcap",  # QUIC v2
    "zeek-curl-8.1.2-dev-http3-www-google-de.pcap",
    "ja4-chrome-cloudflare-quic-with-secrets.pcapng",
    "ja4-tls-handshake.pcapng",
    "ja4-tls3.pcapng",
]

# (capture, client port, field) -> why our value differs from tshark's, and who is right.
DISAGREEMENTS: dict[tuple[str, int, str], str] = {}


def udp_flows(path: Path) -> dict[Endpoints, Datagrams]:
    """UDP payloads per flow; the client is the sender of the flow's first datagram."""
    flows: dict[Endpoints, Datagrams] = {}
    seen: dict[bytes, tuple[Endpoints, bool]] = {}
    with open_capture(path) as reader:
        for _, linktype, frame, _ in reader:
            d = decode(frame, linktype)
            if d[0] != 17:
                continue
            key = d[1]
            if key not in seen:
                src, dst, sport, dport = key_fields(key)
                ends = (str(ipaddress.ip_address(src)), sport,
                        str(ipaddress.ip_address(dst)), dport)
                rev = (ends[2], ends[3], ends[0], ends[1])
                if rev in flows:
                    seen[key] = (rev, False)
                else:
                    seen[key] = (ends, True)
                    flows[ends] = []
            ends, from_client = seen[key]
            flows[ends].append((frame[d[6]:d[6] + d[7]], from_client))
    return flows


def run(datagrams: Datagrams) -> tuple[QuicHandshake, int]:
    """Feed a flow until done: the state and how many datagrams it took."""
    h = QuicHandshake()
    for n, (payload, from_client) in enumerate(datagrams, 1):
        if h.feed(payload, from_client):
            return h, n
    return h, len(datagrams)


_FLOWS: dict[str, dict[Endpoints, Datagrams]] = {}


def corpus_flows(name: str) -> dict[Endpoints, Datagrams]:
    if name not in _FLOWS:
        _FLOWS[name] = udp_flows(CORPUS / name)
    return _FLOWS[name]


def quic_connections() -> list:
    params = []
    for name in QUIC_CAPTURES:
        if not (CORPUS / name).is_file():
            continue
        for conn in oracle(CORPUS / name)["tls_connections"]:
            if conn["protocol"] == "quic":
                params.append(pytest.param(name, conn, id=f"{name}:{conn['client_port']}"))
    return params or [pytest.param("", {}, id="no-corpus")]


def ours(h: QuicHandshake) -> dict:
    ch, sh = h.client_hello, h.server_hello
    assert ch is not None and sh is not None
    j = ja4(ch, "q")
    assert j is not None
    return {
        "sni": ch.sni,
        "offered_versions": hx(ch.versions),
        "alpn_offered": list(ch.alpn),
        "cipher_suites_offered": hx(ch.cipher_suites),
        "extensions_offered": hx(ch.extensions),
        "supported_groups": hx(ch.groups),
        "key_share_groups": hx(ch.key_share_groups),
        "signature_algorithms": hx(ch.signature_algorithms),
        "negotiated_version": f"0x{sh.version:04x}",
        "cipher_suite": f"0x{sh.cipher_suite:04x}",
        "server_key_share_group": f"0x{sh.key_share_group:04x}",
        "hello_retry_request": sh.hello_retry_request,
        "quic_versions": [f"0x{h.version:08x}"],
        "ja4": j[0],
        "ja4_r": j[1],
    }


@pytest.mark.parametrize(("capture", "conn"), quic_connections())
def test_golden_quic_handshake_matches_oracle(corpus_dir: Path, capture: str, conn: dict) -> None:
    flows = corpus_flows(capture)
    ends = (conn["client_ip"], conn["client_port"], conn["server_ip"], conn["server_port"])
    h, _ = run(flows[ends])
    assert h.done and h.error is None, h.error
    got = ours(h)
    for field, value in got.items():
        why = DISAGREEMENTS.get((capture, conn["client_port"], field))
        if why is None:
            assert value == conn[field], (field, value, conn[field])
        else:
            assert value != conn[field], f"no longer disagrees: {why}"


@pytest.mark.parametrize(("capture", "conn"), quic_connections())
def test_every_initial_of_the_flow_is_found_and_decrypts(corpus_dir: Path, capture: str,
                                                          conn: dict) -> None:
    # tshark's quic_initial_packets counts Initials both ways over the whole flow, coalesced
    # ones included. Each must open with the keys of the client's first DCID or, after a
    # Retry, of the Retry's SCID (the flow's original_dcid).
    flows = corpus_flows(capture)
    ends = (conn["client_ip"], conn["client_port"], conn["server_ip"], conn["server_port"])
    datagrams = flows[ends]
    h, _ = run(datagrams)
    first = quic.parse_long_header(datagrams[0][0])
    assert first is not None and h.original_dcid is not None and h.version is not None
    candidates = {first.dcid, h.original_dcid}
    assert len(candidates) == (2 if h.retry else 1)
    largest: dict[tuple[bytes, bool], int] = {}
    initials, versions = 0, set()
    for payload, from_client in datagrams:
        for hdr in quic.iter_long_headers(payload):
            versions.add(f"0x{hdr.version:08x}")
            if hdr.packet_type != "initial":
                continue
            initials += 1
            opened = []
            for dcid in candidates:
                keys = quic.initial_keys(dcid, hdr.version)[0 if from_client else 1]
                try:
                    pn, _ = quic.decrypt_initial(payload, hdr, keys,
                                                 largest.get((dcid, from_client), -1))
                except InvalidTag:
                    continue
                largest[dcid, from_client] = max(pn, largest.get((dcid, from_client), -1))
                opened.append(dcid)
            assert len(opened) == 1
    assert initials == conn["quic_initial_packets"]
    assert sorted(versions) == sorted(conn["quic_versions"])


def test_corpus_quic_cases(corpus_dir: Path) -> None:
    """The special cases the corpus was chosen for actually occur, and are handled."""
    # Chromium 115 scatters its CRYPTO frames in random order within one Initial.
    (flow,) = (f for f in corpus_flows(QUIC_CAPTURES[0]).values() if f[0][0][0] & 0x80)
    payload = flow[0][0]
    hdr = quic.parse_long_header(payload)
    assert hdr is not None and hdr.dcid is not None
    _, plain = quic.decrypt_initial(payload, hdr, quic.initial_keys(hdr.dcid)[0])
    offsets = [off for off, _ in quic.parse_frames(plain).crypto]
    assert len(offsets) > 2 and offsets != sorted(offsets)
    h, _ = run(flow)
    assert h.client_hello is not None and h.client_hello.sni == "api.cirrus-ci.com"

    # Firefox's post-quantum ClientHello needs two Initials.
    (flow,) = corpus_flows("sv-quic-frag.pcap").values()
    h = QuicHandshake()
    h.feed(*flow[0])
    assert h.client_hello is None and h.initial_packets == 1
    h.feed(*flow[1])
    assert h.client_hello is not None and h.client_hello.key_share_groups[0] == 0x11EC

    # A Retry: the handshake that follows uses keys from the Retry's SCID.
    (flow,) = corpus_flows("sv-quic-retry.pcap").values()
    h, _ = run(flow)
    assert h.retry and h.stats.retries == 1 and h.stats.retry_ignored == 1  # the second Retry
    first = quic.parse_long_header(flow[0][0])
    assert first is not None and h.original_dcid != first.dcid

    # QUIC v2 from the first packet on.
    (flow,) = corpus_flows("zeek-quicv2-echo-443.pcap").values()
    h, _ = run(flow)
    assert h.version == QUIC_V2 and quic.version_name(h.version) == "QUICv2"


def test_typical_client_initial_feed_time(corpus_dir: Path) -> None:
    """Reported, with a generous bound: one QUIC flow costs one or two such calls."""
    (flow,) = corpus_flows("zeek-curl-8.1.2-dev-http3-www-google-de.pcap").values()
    payload = flow[0][0]
    n = 200
    start = time.perf_counter()
    for _ in range(n):
        QuicHandshake().feed(payload, True)
    per_call = (time.perf_counter() - start) / n
    print(f"feed of a client Initial: {per_call * 1e6:.0f} us")
    assert per_call < 0.005


# ---------------------------------------------------------------------------
# Bench generator: every QUIC flow against its truth
# ---------------------------------------------------------------------------

_TLS_VERSIONS = {0x0304: "1.3", 0x0303: "1.2", 0x0302: "1.1", 0x0301: "1.0"}


def test_bench_quic_flows_match_truth(bench) -> None:
    """The shared 100k-packet bench capture (tests/conftest.py)."""
    path, truth = bench
    flows = udp_flows(path)
    expected = [f for f in truth["flows"] if f["app"] == "quic"]
    assert len(expected) >= 20
    for f in expected:
        ends = (f["client_ip"], f["client_port"], f["server_ip"], f["server_port"])
        h, _ = run(flows[ends])
        t = f["tls"]
        assert h.client_hello is not None, (ends, h.error)
        assert h.client_hello.sni == t["sni"]
        got = None if h.server_hello is None else _TLS_VERSIONS[h.server_hello.version]
        assert got == t["negotiated_version"], ends
        assert h.initial_packets == f["quic"]["initial_packets"], ends
        assert h.version == f["quic"]["version"] == QUIC_V1
        assert h.original_dcid == bytes.fromhex(f["quic"]["dcid"])
