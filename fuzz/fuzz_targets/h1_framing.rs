//! The HTTP/1.1 pure parsers, at the speed of a function call: the request head parser and the
//! chunked decoder (agent/src/proxy/h1), and the response head parser of tether's client toward
//! targets (agent/src/proxy/upstream/h1.rs).
//!
//! Checks: no panic; a head that parses reports a length within the input and within the limit,
//! and parses the same from a longer buffer; the chunked decoder yields the same data, trailers
//! and verdict whether the input arrives in one piece or split at any point (two hops that
//! disagree on where a body ends is how requests are smuggled); a response head that parses
//! took no more bytes than it was given, parses the same with body bytes after it, and was
//! incomplete at every shorter prefix' end.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tether::proxy::h1::chunked::{ChunkedDecoder, Decoded};
use tether::proxy::h1::head;
use tether::proxy::upstream::h1::parse_response;

const LIMIT: usize = 8192;

#[derive(Debug, PartialEq)]
struct Outcome {
    data: Vec<u8>,
    trailers: Option<Vec<(String, Vec<u8>)>>,
    done: bool,
    error: Option<String>,
    /// Bytes left unconsumed after the end.
    rest: Vec<u8>,
}

fn decode(pieces: &[&[u8]]) -> Outcome {
    let mut decoder = ChunkedDecoder::new(1024);
    let mut input = BytesMut::new();
    let mut outcome = Outcome {
        data: Vec::new(),
        trailers: None,
        done: false,
        error: None,
        rest: Vec::new(),
    };
    'feed: for piece in pieces {
        input.extend_from_slice(piece);
        loop {
            match decoder.decode(&mut input) {
                Ok(Some(Decoded::Data(bytes))) => {
                    assert!(!bytes.is_empty(), "empty data frame");
                    outcome.data.extend_from_slice(&bytes);
                }
                Ok(Some(Decoded::Trailers(map))) => {
                    outcome.trailers = Some(
                        map.iter()
                            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                            .collect(),
                    );
                }
                Ok(Some(Decoded::End)) => {}
                Ok(None) => break,
                Err(error) => {
                    outcome.error = Some(error.to_string());
                    break 'feed;
                }
            }
        }
    }
    outcome.done = decoder.is_done();
    if outcome.done {
        outcome.rest = input.to_vec();
    }
    outcome
}

fuzz_target!(|data: &[u8]| {
    let head_method = data.first().is_some_and(|b| b & 1 == 1);
    if let Ok(Some(parsed)) = parse_response(data, head_method) {
        assert!(parsed.head_length <= data.len());
        let mut longer = data.to_vec();
        longer.extend_from_slice(b"HTTP/1.1 200 OK\r\n\r\n");
        let again = parse_response(&longer, head_method)
            .expect("a response head still parses with bytes after it")
            .expect("and is complete");
        assert_eq!(again, parsed);
        if parsed.head_length > 0 {
            assert!(
                !matches!(
                    parse_response(&data[..parsed.head_length - 1], head_method),
                    Ok(Some(_))
                ),
                "a head ended before its end"
            );
        }
    }

    // The read buffer's parse (fields sharing the buffer) decides exactly as the copying one.
    let copied = head::parse(data, LIMIT);
    let mut buffer = bytes::BytesMut::from(data);
    match (&copied, head::parse_shared(&mut buffer, LIMIT)) {
        (Ok(Some((parsed, length))), Ok(Some(shared))) => {
            assert_eq!(buffer.len(), data.len() - length, "the head is split off");
            assert_eq!(shared.framing, parsed.framing);
            assert_eq!(shared.keep_alive, parsed.keep_alive);
            assert_eq!(shared.request.uri(), parsed.request.uri());
            assert_eq!(shared.request.headers(), parsed.request.headers());
        }
        (Ok(None), Ok(None)) => assert_eq!(buffer.len(), data.len()),
        (Err(a), Err(b)) => assert_eq!(*a, b),
        (a, b) => panic!("copied {a:?} vs shared {b:?}"),
    }

    match copied {
        Ok(Some((parsed, length))) => {
            assert!(length <= data.len() && length <= LIMIT);
            let mut longer = data.to_vec();
            longer.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
            let again = head::parse(&longer, LIMIT)
                .expect("a head still parses with bytes after it")
                .expect("and is complete");
            assert_eq!(again.1, length);
            assert_eq!(again.0.framing, parsed.framing);
        }
        Ok(None) => assert!(data.len() < LIMIT),
        Err(_) => {}
    }

    let whole = decode(&[data]);
    let split = data.first().map_or(0, |b| usize::from(*b)) % (data.len() + 1);
    let (front, back) = data.split_at(split);
    let pieces = decode(&[front, back]);
    // An error may be found at a different point, but it is found either way.
    assert_eq!(
        whole.error.is_some(),
        pieces.error.is_some(),
        "{whole:?} vs {pieces:?}"
    );
    if whole.error.is_none() {
        assert_eq!(whole, pieces);
    }
    let bytewise: Vec<&[u8]> = data.chunks(1).collect();
    let one_by_one = decode(&bytewise);
    assert_eq!(whole.error.is_some(), one_by_one.error.is_some());
    if whole.error.is_none() {
        assert_eq!(whole, one_by_one);
    }
});
