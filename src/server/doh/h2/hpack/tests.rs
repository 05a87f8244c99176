//! The decoder against RFC 7541 Appendix C, DoH requests as a client's
//! encoder writes them, every error, the header list limit and memory.
//!
//! Vectors not in the RFC were made with an independent encoder (Python's
//! `hpack` 4.2.0, Huffman on) and are kept here as hex.

use super::*;

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

type Fields = Vec<(String, String)>;

fn decode(d: &mut Decoder, block: &[u8], max_list: usize) -> (Fields, Result<(), HpackError>) {
    let mut fields = Vec::new();
    let result = d.decode(block, max_list, |n, v| {
        fields.push((
            String::from_utf8_lossy(n).into_owned(),
            String::from_utf8_lossy(v).into_owned(),
        ))
    });
    (fields, result)
}

fn ok(d: &mut Decoder, block: &str) -> Fields {
    let (fields, result) = decode(d, &hex(block), usize::MAX);
    assert_eq!(result, Ok(()), "{block}");
    fields
}

fn err(d: &mut Decoder, block: &[u8]) -> HpackError {
    decode(d, block, usize::MAX).1.unwrap_err()
}

fn f(pairs: &[(&str, &str)]) -> Fields {
    pairs
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

/// The dynamic table, newest first, and its size.
fn table(d: &Decoder) -> (Fields, usize) {
    let entries = (0..d.table.len())
        .map(|i| {
            let (n, v) = d.table.get(62 + i).unwrap();
            (
                String::from_utf8_lossy(n).into_owned(),
                String::from_utf8_lossy(v).into_owned(),
            )
        })
        .collect();
    (entries, d.table.size())
}

/// C.2: one literal of each kind, each on a fresh decoder.
#[test]
fn rfc_c2_literals() {
    let mut d = Decoder::new(4096);
    let block = "400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572";
    assert_eq!(ok(&mut d, block), f(&[("custom-key", "custom-header")]));
    assert_eq!(table(&d), (f(&[("custom-key", "custom-header")]), 55));

    let mut d = Decoder::new(4096);
    let block = "040c 2f73 616d 706c 652f 7061 7468";
    assert_eq!(ok(&mut d, block), f(&[(":path", "/sample/path")]));
    assert_eq!(table(&d), (f(&[]), 0));

    let mut d = Decoder::new(4096);
    let block = "1008 7061 7373 776f 7264 0673 6563 7265 74";
    assert_eq!(ok(&mut d, block), f(&[("password", "secret")]));
    assert_eq!(table(&d), (f(&[]), 0));

    let mut d = Decoder::new(4096);
    assert_eq!(ok(&mut d, "82"), f(&[(":method", "GET")]));
    assert_eq!(table(&d), (f(&[]), 0));
}

/// C.3 (raw strings) and C.4 (the same requests, Huffman-coded): three
/// requests on one decoder, the table checked after each.
#[test]
fn rfc_c3_c4_requests() {
    let c3 = [
        "8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
        "8286 84be 5808 6e6f 2d63 6163 6865",
        "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65",
    ];
    let c4 = [
        "8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff",
        "8286 84be 5886 a8eb 1064 9cbf",
        "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
    ];
    let base = [
        (":method", "GET"),
        (":scheme", "http"),
        (":path", "/"),
        (":authority", "www.example.com"),
    ];
    for blocks in [c3, c4] {
        let mut d = Decoder::new(4096);
        assert_eq!(ok(&mut d, blocks[0]), f(&base));
        assert_eq!(table(&d), (f(&[(":authority", "www.example.com")]), 57));

        let mut second = f(&base);
        second.extend(f(&[("cache-control", "no-cache")]));
        assert_eq!(ok(&mut d, blocks[1]), second);
        let t = f(&[
            ("cache-control", "no-cache"),
            (":authority", "www.example.com"),
        ]);
        assert_eq!(table(&d), (t, 110));

        let third = f(&[
            (":method", "GET"),
            (":scheme", "https"),
            (":path", "/index.html"),
            (":authority", "www.example.com"),
            ("custom-key", "custom-value"),
        ]);
        assert_eq!(ok(&mut d, blocks[2]), third);
        let t = f(&[
            ("custom-key", "custom-value"),
            ("cache-control", "no-cache"),
            (":authority", "www.example.com"),
        ]);
        assert_eq!(table(&d), (t, 164));
    }
}

/// C.5 (raw) and C.6 (Huffman): responses with a 256-byte table, where
/// the second and third evict the oldest entries.
#[test]
fn rfc_c5_c6_responses_evict() {
    let c5 = [
        "4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133
         2032 303a 3133 3a32 3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65 7861 6d70
         6c65 2e63 6f6d",
        "4803 3330 37c1 c0bf",
        "88c1 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3220 474d
         54c0 5a04 677a 6970 7738 666f 6f3d 4153 444a 4b48 514b 425a 584f 5157 454f 5049
         5541 5851 5745 4f49 553b 206d 6178 2d61 6765 3d33 3630 303b 2076 6572 7369 6f6e
         3d31",
    ];
    let c6 = [
        "4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6
         2d1b ff6e 919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3",
        "4883 640e ffc1 c0bf",
        "88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b d9ab
         77ad 94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f
         9587 3160 65c0 03ed 4ee5 b106 3d50 07",
    ];
    let date1 = "Mon, 21 Oct 2013 20:13:21 GMT";
    let location = "https://www.example.com";
    let cookie = "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1";
    for blocks in [c5, c6] {
        let mut d = Decoder::new(256);
        let first = f(&[
            (":status", "302"),
            ("cache-control", "private"),
            ("date", date1),
            ("location", location),
        ]);
        assert_eq!(ok(&mut d, blocks[0]), first);
        let t = f(&[
            ("location", location),
            ("date", date1),
            ("cache-control", "private"),
            (":status", "302"),
        ]);
        assert_eq!(table(&d), (t, 222));

        let mut second = first.clone();
        second[0].1 = "307".into();
        assert_eq!(ok(&mut d, blocks[1]), second);
        let t = f(&[
            (":status", "307"),
            ("location", location),
            ("date", date1),
            ("cache-control", "private"),
        ]);
        assert_eq!(table(&d), (t, 222), ":status 302 evicted");

        let third = f(&[
            (":status", "200"),
            ("cache-control", "private"),
            ("date", "Mon, 21 Oct 2013 20:13:22 GMT"),
            ("location", location),
            ("content-encoding", "gzip"),
            ("set-cookie", cookie),
        ]);
        assert_eq!(ok(&mut d, blocks[2]), third);
        let t = f(&[
            ("set-cookie", cookie),
            ("content-encoding", "gzip"),
            ("date", "Mon, 21 Oct 2013 20:13:22 GMT"),
        ]);
        assert_eq!(table(&d), (t, 215));
    }
}

/// DoH requests as curl would send them, made by an independent encoder:
/// two GETs then two POSTs on one connection; the last POST is all
/// references to the table (8 bytes).
pub(super) const DOH_BLOCKS: [&str; 4] = [
    "8287418b92a42e5f23a6ba0abd454f44aa624a90b76b4b67aff24a91076781761861bb0c30c30c30c3745c5ae7c8\
     3e23c5c2ff313e986186ec30e07a8825b650c3cbb6b83f53901d75d0620d263d4c495216a4a840e62f",
    "8287c144ba624a90b76b4b67aff24a910430c3761861bb0c30c30c30dd85991993c49417161493179a2113febf7c\
     430c3b21bb0c30d7774c30c30c30c30c3fc0bf",
    "8387c24488624a90b76b4b67afc1c05f901d75d0620d263d4c495216a4a840e62f5c82659f",
    "8387c5c0c3c2bfbe",
];

#[test]
fn doh_requests() {
    let mut d = Decoder::new(4096);
    let get = |path: &str| {
        f(&[
            (":method", "GET"),
            (":scheme", "https"),
            (":authority", "dns.example.net"),
            (":path", path),
            ("user-agent", "curl/8.5.0"),
            ("accept", "application/dns-message"),
        ])
    };
    assert_eq!(
        ok(&mut d, DOH_BLOCKS[0]),
        get("/dns-query?dns=q80BAAABAAAAAAAAB2V4YW1wbGUDY29tAAABAAE")
    );
    assert_eq!(
        ok(&mut d, DOH_BLOCKS[1]),
        get("/dns-query?dns=AAABAAABAAAAAAABA3d3dwdleGFtcGxlA29yZwAAAQABAAApBNAAAAAAAAA")
    );
    let post = f(&[
        (":method", "POST"),
        (":scheme", "https"),
        (":authority", "dns.example.net"),
        (":path", "/dns-query"),
        ("user-agent", "curl/8.5.0"),
        ("accept", "application/dns-message"),
        ("content-type", "application/dns-message"),
        ("content-length", "33"),
    ]);
    assert_eq!(ok(&mut d, DOH_BLOCKS[2]), post);
    assert_eq!(ok(&mut d, DOH_BLOCKS[3]), post);
}

#[test]
fn index_errors() {
    let mut d = Decoder::new(4096);
    assert_eq!(err(&mut d, &[0x80]), HpackError::ZeroIndex);
    assert_eq!(err(&mut d, &[0xbe]), HpackError::BadIndex(62));
    // A literal whose indexed name is past the table.
    assert_eq!(err(&mut d, &[0x7e, 0x01, b'v']), HpackError::BadIndex(62));
    assert_eq!(
        err(&mut d, &[0x0f, 0x2f, 0x01, b'v']),
        HpackError::BadIndex(62)
    );
    // Once inserted, 62 exists, 63 not.
    ok(&mut d, "4001 6e01 76");
    assert_eq!(ok(&mut d, "be"), f(&[("n", "v")]));
    assert_eq!(err(&mut d, &[0xbf]), HpackError::BadIndex(63));
    // An index far past the tables, and one over u32.
    assert_eq!(
        err(&mut d, &[0xff, 0x80, 0xff, 0xff, 0xff, 0x0f]),
        HpackError::BadIndex(u32::MAX)
    );
    assert_eq!(
        err(&mut d, &[0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]),
        HpackError::IntegerOverflow
    );
}

#[test]
fn truncated_blocks() {
    let mut d = Decoder::new(4096);
    // String length 10, 3 bytes there.
    assert_eq!(err(&mut d, &hex("400a 6375 73")), HpackError::Truncated);
    // Name complete, value missing, then value length cut.
    assert_eq!(err(&mut d, &hex("4001 6e")), HpackError::Truncated);
    assert_eq!(err(&mut d, &hex("4001 6e7f")), HpackError::Truncated);
    // Index integer cut.
    assert_eq!(err(&mut d, &[0xff]), HpackError::Truncated);
    // Huffman-coded value length past the block.
    assert_eq!(err(&mut d, &hex("0082 8c")), HpackError::Truncated);
    // A length near u32::MAX does not overflow the position.
    assert_eq!(
        err(&mut d, &hex("407f ffff ffff 07")),
        HpackError::Truncated
    );
}

#[test]
fn huffman_errors_in_a_block() {
    let mut d = Decoder::new(4096);
    // Value "a" Huffman-coded (00011 + 111 padding) is fine.
    assert_eq!(ok(&mut d, "0001 6e81 1f"), f(&[("n", "a")]));
    // A zero in the padding.
    assert_eq!(
        err(&mut d, &hex("0001 6e81 1e")),
        HpackError::HuffmanPadding
    );
    // A whole byte of padding.
    assert_eq!(
        err(&mut d, &hex("0001 6e82 1fff")),
        HpackError::HuffmanPadding
    );
    // EOS (30 ones) then padding: 32 ones.
    assert_eq!(
        err(&mut d, &hex("0001 6e84 ffff ffff")),
        HpackError::HuffmanEos
    );
}

#[test]
fn table_size_updates() {
    let mut d = Decoder::new(4096);
    ok(&mut d, "4001 6e01 76");
    // Above the advertised maximum: 4097 = 31 + 4066 (0xe2 0x1f).
    assert_eq!(
        err(&mut d, &hex("3fe2 1f")),
        HpackError::TableSizeTooLarge {
            size: 4097,
            max: 4096
        }
    );
    // After a field of the block.
    assert_eq!(err(&mut d, &hex("8220")), HpackError::TableSizeUpdateLate);
    // At the start, twice (lowest then final, as RFC 7541 §4.2 allows):
    // to 0 empties the table, then back to 4096.
    let mut d = Decoder::new(4096);
    ok(&mut d, "4001 6e01 76");
    assert_eq!(ok(&mut d, "203f e11f 82"), f(&[(":method", "GET")]));
    assert_eq!(table(&d), (f(&[]), 0));
    assert_eq!(err(&mut d, &[0xbe]), HpackError::BadIndex(62));
    // A smaller maximum evicts down to it: 34 keeps one 1+1+32 entry.
    ok(&mut d, "4001 6101 31 4001 6201 32");
    ok(&mut d, "3f03");
    assert_eq!(table(&d), (f(&[("b", "2")]), 34));
    // Then a new entry evicts the old one to fit in 34.
    ok(&mut d, "4001 6301 33");
    assert_eq!(table(&d), (f(&[("c", "3")]), 34));
}

/// Past the list limit the caller gets an error, but the table took every
/// insertion of the block, so the next block's references resolve.
#[test]
fn list_too_large_keeps_the_table_in_step() {
    let mut d = Decoder::new(4096);
    // :method GET (42), then "x-a: 1" (36) and "x-b: 2" (36), both inserted.
    let block = hex("82 4003 782d 6101 31 4003 782d 6201 32");
    let (fields, result) = decode(&mut d, &block, 42 + 36);
    assert_eq!(result, Err(HpackError::ListTooLarge));
    assert_eq!(fields, f(&[(":method", "GET"), ("x-a", "1")]));
    // The encoder's table now has x-b at 62 and x-a at 63.
    assert_eq!(ok(&mut d, "be bf"), f(&[("x-b", "2"), ("x-a", "1")]));
    // A later error in the same block is the connection's, not the list's.
    let (_, result) = decode(&mut d, &hex("82 82 80"), 42);
    assert_eq!(result, Err(HpackError::ZeroIndex));
    // Exactly at the limit is within it.
    assert_eq!(decode(&mut d, &hex("82 82"), 84).1, Ok(()));
}

#[test]
fn memory() {
    let mut d = Decoder::new(4096);
    assert_eq!(d.held(), 0, "a new decoder holds nothing");
    for block in DOH_BLOCKS {
        ok(&mut d, block);
    }
    let after_requests = d.held();
    assert!(
        after_requests < 1024,
        "after four requests: {after_requests}"
    );

    // A Huffman-coded value of 12,000 'a's (5 bits each: 7,500 bytes)
    // makes the scratch buffer large; it is dropped after the block.
    let mut block = vec![0x00, 0x01, b'x'];
    block.extend(int(0x80, 7, 7500));
    for _ in 0..1500 {
        // Eight 'a's (00011 each) fill five bytes exactly.
        block.extend([0x18, 0xc6, 0x31, 0x8c, 0x63]);
    }
    let mut value_len = 0;
    let result = d.decode(&block, usize::MAX, |_, v| value_len = v.len());
    assert_eq!(result, Ok(()));
    assert_eq!(value_len, 12_000);
    assert!(
        d.held() <= after_requests + SCRATCH_KEEP,
        "held {} after a big block",
        d.held()
    );

    // The table never holds much more than its RFC size: many tiny
    // entries (1-byte name, empty value: 33 bytes by RFC accounting).
    let mut d = Decoder::new(4096);
    for i in 0..1000u32 {
        let name = b'a' + (i % 26) as u8;
        assert_eq!(
            decode(&mut d, &[0x40, 0x01, name, 0x00], usize::MAX).1,
            Ok(())
        );
    }
    assert_eq!(d.table.len(), 4096 / 33);
    assert!(d.held() <= 2 * 4096, "held {}", d.held());
}

/// A prefix integer (RFC 7541 §5.1) with `flags` above the prefix.
fn int(flags: u8, prefix_bits: u8, value: usize) -> Vec<u8> {
    let max = (1usize << prefix_bits) - 1;
    if value < max {
        return vec![flags | value as u8];
    }
    let mut out = vec![flags | max as u8];
    let mut rest = value - max;
    while rest >= 0x80 {
        out.push((rest as u8 & 0x7f) | 0x80);
        rest >>= 7;
    }
    out.push(rest as u8);
    out
}

/// Fields of every kind, mixed, round-trip the callback in order, and a
/// raw literal's slices point into the block (no copy).
#[test]
fn raw_literals_are_slices_of_the_block() {
    let mut d = Decoder::new(4096);
    let block = hex("0003 6162 6303 7879 7a");
    let range = block.as_ptr_range();
    let mut inside = false;
    d.decode(&block, usize::MAX, |n, v| {
        inside = range.contains(&n.as_ptr()) && range.contains(&v.as_ptr());
    })
    .unwrap();
    assert!(inside);
}
