//! The Murmur3 partitioner, bit-for-bit compatible with Cassandra's `Murmur3Partitioner`, and
//! token ranges (the unit of sharding).
//!
//! A partition key is serialized ([`serialize_partition_key`]), hashed with MurmurHash3
//! x64_128 (seed 0), and the first 64-bit half of the hash, read as a signed integer, is its
//! [`Token`]. Token-aware drivers compute the same token to pick replicas, so any difference,
//! however small, sends requests to the wrong node: the tests check this module against
//! vectors produced by the DataStax Python driver (`storage/tests/gen_murmur3_vectors.py`).
//!
//! Two Cassandra quirks are reproduced on purpose:
//! - The tail bytes (the last `len % 16`) are read as *signed* bytes and sign-extended before
//!   being shifted into place, unlike the reference MurmurHash3. Keys whose tail has a byte
//!   `>= 0x80` hash differently from the reference implementation.
//! - `i64::MIN` is reserved as the ring's minimum token: a hash of `i64::MIN` becomes
//!   `i64::MAX`, and the empty key (refused as a partition key) gets the minimum token.
//!
//! The ring is the signed 64-bit integers in order, wrapping from `i64::MAX` to `i64::MIN`.
//! A [`TokenRange`] is Cassandra's half-open `(start, end]`:
//!
//! ```text
//!   MIN_TOKEN ─────────────────────────────────────────────────────── MAX_TOKEN
//!   (start ━━━━━━━━━━━━━━ end]                  normal range, start < end
//!   ━━━━━━━━ end]                    (start ━━━━━━━━━━━━━━━━━━━━━━━━━  wraps, start > end
//!   ━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━  full ring, start == end
//! ```

use std::fmt;

/// A position on the token ring: the Murmur3 hash of a partition key.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct Token(pub i64);

/// The ring's minimum token. No partition key hashes to it (Cassandra's rule), so a range
/// ending at `MIN_TOKEN` extends to the end of the ring.
pub const MIN_TOKEN: Token = Token(i64::MIN);

/// The ring's largest token.
pub const MAX_TOKEN: Token = Token(i64::MAX);

/// The longest component of a composite partition key: its length is written as a `u16`.
pub const PARTITION_KEY_COMPONENT_BYTES_MAX: usize = u16::MAX as usize;

impl fmt::Display for Token {
    /// Formats the token as Cassandra prints it: the signed decimal integer.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Returns the token of a serialized partition key, as Cassandra's
/// `Murmur3Partitioner.getToken` computes it.
pub fn token(serialized_partition_key: &[u8]) -> Token {
    if serialized_partition_key.is_empty() {
        // Cassandra: `if (key.remaining() == 0) return MINIMUM;`.
        return MIN_TOKEN;
    }
    let (hash_first_half, _) = murmur3_x64_128(serialized_partition_key, 0);
    let token = normalize(hash_first_half as i64);
    assert_ne!(
        token, MIN_TOKEN,
        "a non-empty key never gets the minimum token"
    );
    token
}

/// Maps a hash to a token: `i64::MIN` is reserved for the ring's minimum.
fn normalize(hash: i64) -> Token {
    if hash == i64::MIN {
        MAX_TOKEN
    } else {
        Token(hash)
    }
}

/// Serializes the components of a partition key the way Cassandra does before hashing.
///
/// One component is its bytes as they are. Several components use Cassandra's
/// `CompositeType` layout: for each component, its length as a big-endian `u16`, its bytes,
/// and an end-of-component byte `0x00`.
///
/// ```text
///   ┌──────────┬─────────────┬──────┬──────────┬─────────────┬──────┬─ ─ ─
///   │ len (BE) │ component 0 │ 0x00 │ len (BE) │ component 1 │ 0x00 │
///   └──────────┴─────────────┴──────┴──────────┴─────────────┴──────┴─ ─ ─
/// ```
///
/// # Panics
///
/// Panics if `components` is empty, or if a component of a composite key is longer than
/// [`PARTITION_KEY_COMPONENT_BYTES_MAX`]: callers validate key sizes before building keys.
pub fn serialize_partition_key(components: &[&[u8]]) -> Vec<u8> {
    assert!(
        !components.is_empty(),
        "a partition key has at least one component"
    );
    if let [single_component] = components {
        return single_component.to_vec();
    }
    let n_bytes_total: usize = components.iter().map(|component| component.len() + 3).sum();
    let mut serialized = Vec::with_capacity(n_bytes_total);
    for component in components {
        let component_length = u16::try_from(component.len())
            .expect("partition key components are at most PARTITION_KEY_COMPONENT_BYTES_MAX");
        serialized.extend_from_slice(&component_length.to_be_bytes());
        serialized.extend_from_slice(component);
        serialized.push(0x00);
    }
    assert_eq!(serialized.len(), n_bytes_total);
    serialized
}

const MURMUR3_C1: u64 = 0x87c3_7b91_1142_53d5;
const MURMUR3_C2: u64 = 0x4cf5_ad43_2745_937f;

/// MurmurHash3 x64_128 as Cassandra implements it (`MurmurHash.hash3_x64_128`), tail bytes
/// sign-extended. Returns the two 64-bit halves `(h1, h2)`; the token uses `h1`.
pub fn murmur3_x64_128(data: &[u8], seed: u64) -> (u64, u64) {
    let mut h1 = seed;
    let mut h2 = seed;
    let mut blocks = data.chunks_exact(16);
    for block in &mut blocks {
        let (low_half, high_half) = block.split_at(8);
        let mut k1 = u64::from_le_bytes(low_half.try_into().expect("a block half is 8 bytes"));
        let mut k2 = u64::from_le_bytes(high_half.try_into().expect("a block half is 8 bytes"));

        k1 = k1
            .wrapping_mul(MURMUR3_C1)
            .rotate_left(31)
            .wrapping_mul(MURMUR3_C2);
        h1 ^= k1;
        h1 = h1
            .rotate_left(27)
            .wrapping_add(h2)
            .wrapping_mul(5)
            .wrapping_add(0x52dc_e729);

        k2 = k2
            .wrapping_mul(MURMUR3_C2)
            .rotate_left(33)
            .wrapping_mul(MURMUR3_C1);
        h2 ^= k2;
        h2 = h2
            .rotate_left(31)
            .wrapping_add(h1)
            .wrapping_mul(5)
            .wrapping_add(0x3849_5ab5);
    }

    let tail = blocks.remainder();
    assert!(tail.len() < 16);
    // Cassandra reads tail bytes with `(long) key.get(i)`: a signed byte, sign-extended.
    let tail_word = |tail_idx: usize| (tail[tail_idx] as i8) as i64 as u64;
    let mut k1: u64 = 0;
    let mut k2: u64 = 0;
    for tail_idx in (8..tail.len()).rev() {
        k2 ^= tail_word(tail_idx) << ((tail_idx - 8) * 8);
    }
    if tail.len() > 8 {
        k2 = k2
            .wrapping_mul(MURMUR3_C2)
            .rotate_left(33)
            .wrapping_mul(MURMUR3_C1);
        h2 ^= k2;
    }
    for tail_idx in (0..tail.len().min(8)).rev() {
        k1 ^= tail_word(tail_idx) << (tail_idx * 8);
    }
    if !tail.is_empty() {
        k1 = k1
            .wrapping_mul(MURMUR3_C1)
            .rotate_left(31)
            .wrapping_mul(MURMUR3_C2);
        h1 ^= k1;
    }

    h1 ^= data.len() as u64;
    h2 ^= data.len() as u64;
    h1 = h1.wrapping_add(h2);
    h2 = h2.wrapping_add(h1);
    h1 = murmur3_fmix64(h1);
    h2 = murmur3_fmix64(h2);
    h1 = h1.wrapping_add(h2);
    h2 = h2.wrapping_add(h1);
    (h1, h2)
}

fn murmur3_fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^= k >> 33;
    k
}

/// A range of tokens `(start, end]`, as Cassandra's `Range<Token>`: `start` is excluded, `end`
/// included. `start > end` wraps around the end of the ring; `start == end` is the full ring.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct TokenRange {
    /// Excluded.
    pub start: Token,
    /// Included.
    pub end: Token,
}

/// The number of tokens on the ring (every `i64`), as a `u128` so it fits.
const RING_TOKEN_COUNT: u128 = 1 << 64;

impl TokenRange {
    /// Returns the range `(MIN_TOKEN, MIN_TOKEN]`: every token.
    pub fn full_ring() -> TokenRange {
        TokenRange {
            start: MIN_TOKEN,
            end: MIN_TOKEN,
        }
    }

    /// Returns true if the range covers the whole ring (`start == end`).
    pub fn is_full_ring(&self) -> bool {
        self.start == self.end
    }

    /// Returns true if `token` lies in `(start, end]`, wrapping as Cassandra's
    /// `Range.contains` does.
    pub fn contains(&self, token: Token) -> bool {
        if self.start < self.end {
            self.start < token && token <= self.end
        } else {
            // Wrapping (or the full ring): everything after start, and everything up to end.
            token > self.start || token <= self.end
        }
    }

    /// Returns true if the two ranges share a token. Where arcs overlap, the overlap ends at
    /// the end of one of them, so testing both ends decides it (a full ring holds every
    /// token); ranges that only touch (`(a, b]` and `(b, c]`) do not meet.
    pub fn meets(&self, other: &TokenRange) -> bool {
        self.contains(other.end) || other.contains(self.end)
    }

    /// Returns true if the range crosses the end of the ring, i.e. holds tokens both at the
    /// top (`> start`) and at the bottom (`<= end`) of the ring. A range ending at
    /// [`MIN_TOKEN`] does not wrap (it stops at the ring's end; Cassandra's `unwrap` keeps it
    /// whole), and neither does `(MIN_TOKEN, MIN_TOKEN]`; any other full ring `(t, t]` does.
    pub fn wraps(&self) -> bool {
        self.start >= self.end && self.end != MIN_TOKEN
    }

    /// Returns the number of tokens in the range (`2^64` for the full ring).
    pub fn token_count(&self) -> u128 {
        if self.is_full_ring() {
            RING_TOKEN_COUNT
        } else {
            // Distance from start to end going up the ring, modulo 2^64.
            u128::from(self.end.0.wrapping_sub(self.start.0) as u64)
        }
    }

    /// Splits the range into `n_parts` contiguous ranges of (nearly) equal token counts, in
    /// ring order from `start`; together they cover exactly this range. Used to cut the
    /// ring into shards.
    ///
    /// # Panics
    ///
    /// Panics if `n_parts` is 0 or larger than the number of tokens in the range (a part
    /// would be empty, and an empty `(t, t]` means the full ring).
    pub fn split_evenly(&self, n_parts: usize) -> Vec<TokenRange> {
        assert!(n_parts > 0, "a range splits into at least one part");
        let token_count = self.token_count();
        let n_parts_u128 = n_parts as u128;
        assert!(
            n_parts_u128 <= token_count,
            "cannot split {token_count} tokens into {n_parts} non-empty parts"
        );
        if n_parts == 1 {
            return vec![*self];
        }
        // Boundary idx lies floor(token_count * idx / n_parts) tokens after start. The product
        // fits a u128: token_count <= 2^64 and idx <= n_parts < 2^64.
        let boundary = |boundary_idx: usize| -> Token {
            let offset = token_count * boundary_idx as u128 / n_parts_u128;
            Token(self.start.0.wrapping_add(offset as u64 as i64))
        };
        let parts: Vec<TokenRange> = (0..n_parts)
            .map(|part_idx| TokenRange {
                start: boundary(part_idx),
                end: boundary(part_idx + 1),
            })
            .collect();
        assert_eq!(parts.len(), n_parts);
        assert!(
            parts.iter().all(|part| !part.is_full_ring()),
            "every part is non-empty"
        );
        assert_eq!(parts.first().map(|part| part.start), Some(self.start));
        assert_eq!(parts.last().map(|part| part.end), Some(self.end));
        parts
    }
}

impl fmt::Display for TokenRange {
    /// Formats the range as Cassandra does: `(start,end]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "({},{}]", self.start, self.end)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const VECTORS: &str = include_str!("../tests/data/murmur3_vectors.txt");

    proptest! {
        /// `meets` agrees with a token-by-token test on a small ring of candidate tokens
        /// (every start and end, and the tokens just after them).
        #[test]
        fn ranges_meet_exactly_when_they_share_a_token(
            a in -8i64..8, b in -8i64..8, c in -8i64..8, d in -8i64..8,
        ) {
            let (x, y) = (
                TokenRange { start: Token(a), end: Token(b) },
                TokenRange { start: Token(c), end: Token(d) },
            );
            let shared = (-9i64..=9)
                .map(Token)
                .chain([MIN_TOKEN, Token(i64::MAX)])
                .any(|t| x.contains(t) && y.contains(t));
            prop_assert_eq!(x.meets(&y), shared);
            prop_assert_eq!(y.meets(&x), shared);
        }
    }

    /// Parses the driver's vectors: `(key, token)` pairs.
    fn vectors() -> Vec<(Vec<u8>, i64)> {
        VECTORS
            .lines()
            .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
            .map(|line| {
                let (key_hex, token_text) = line.split_once(' ').expect("line is `key token`");
                let key = if key_hex == "-" {
                    Vec::new()
                } else {
                    decode_hex(key_hex)
                };
                (key, token_text.parse().expect("token is an i64"))
            })
            .collect()
    }

    fn decode_hex(text: &str) -> Vec<u8> {
        assert!(text.len().is_multiple_of(2), "odd hex length");
        (0..text.len())
            .step_by(2)
            .map(|idx| u8::from_str_radix(&text[idx..idx + 2], 16).expect("hex digit"))
            .collect()
    }

    #[test]
    fn tokens_match_the_python_driver() {
        let vectors = vectors();
        assert!(vectors.len() >= 500, "only {} vectors", vectors.len());
        let mut n_checked = 0;
        let mut tail_lengths_seen = [false; 16];
        for (key, expected_token) in &vectors {
            if key.is_empty() {
                // The driver hashes the empty key; Cassandra gives it the minimum token.
                let (hash, _) = murmur3_x64_128(key, 0);
                assert_eq!(normalize(hash as i64), Token(*expected_token));
                assert_eq!(token(key), MIN_TOKEN);
            } else {
                assert_eq!(token(key), Token(*expected_token), "key {key:02x?}");
            }
            tail_lengths_seen[key.len() % 16] = true;
            n_checked += 1;
        }
        assert_eq!(n_checked, vectors.len());
        assert!(
            tail_lengths_seen.iter().all(|seen| *seen),
            "every tail length is covered"
        );
    }

    #[test]
    fn well_known_tokens() {
        let check = |key: &[u8], expected: i64| assert_eq!(token(key), Token(expected));
        // int 1, bigint 1, and text "hello": the driver's values, also quoted in Cassandra docs
        // and blog posts on token-aware routing.
        check(&1i32.to_be_bytes(), -4_069_959_284_402_364_209);
        check(&1i64.to_be_bytes(), 6_292_367_497_774_912_474);
        // A tail byte >= 0x80 is sign-extended (Cassandra's quirk, matched by the driver).
        let key_with_high_tail = [0x9b_u8];
        check(&key_with_high_tail, -9_123_149_863_833_880_138);
    }

    #[test]
    fn composite_keys_serialize_like_composite_type() {
        let serialized = serialize_partition_key(&[&[0x00, 0x00, 0x00, 0x01], b"ab"]);
        assert_eq!(
            serialized,
            [
                0x00, 0x04, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x02, b'a', b'b', 0x00
            ]
        );
        assert_eq!(serialize_partition_key(&[b"ab"]), b"ab");
        assert_eq!(serialize_partition_key(&[b"", b""]), [0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn token_ranges_contain_as_cassandra() {
        let range = TokenRange {
            start: Token(-10),
            end: Token(10),
        };
        assert!(!range.contains(Token(-10)));
        assert!(range.contains(Token(-9)));
        assert!(range.contains(Token(10)));
        assert!(!range.contains(Token(11)));
        assert!(!range.wraps());

        let wrapping = TokenRange {
            start: Token(10),
            end: Token(-10),
        };
        assert!(wrapping.wraps());
        assert!(wrapping.contains(MAX_TOKEN));
        assert!(wrapping.contains(MIN_TOKEN));
        assert!(wrapping.contains(Token(-10)));
        assert!(!wrapping.contains(Token(0)));
        assert!(!wrapping.contains(Token(10)));

        let to_ring_end = TokenRange {
            start: Token(0),
            end: MIN_TOKEN,
        };
        assert!(!to_ring_end.wraps());
        assert!(to_ring_end.contains(MAX_TOKEN));
        assert!(!to_ring_end.contains(Token(-1)));

        let full = TokenRange::full_ring();
        assert!(full.is_full_ring() && !full.wraps());
        assert_eq!(full.token_count(), 1 << 64);
        for probe in [MIN_TOKEN, Token(-1), Token(0), MAX_TOKEN] {
            assert!(full.contains(probe));
            assert!(
                TokenRange {
                    start: Token(5),
                    end: Token(5)
                }
                .contains(probe)
            );
        }
        assert_eq!(
            full.to_string(),
            "(-9223372036854775808,-9223372036854775808]"
        );
    }

    #[test]
    fn full_ring_splits_into_equal_shards() {
        let shards = TokenRange::full_ring().split_evenly(4);
        let bounds: Vec<String> = shards.iter().map(ToString::to_string).collect();
        assert_eq!(
            bounds,
            [
                "(-9223372036854775808,-4611686018427387904]",
                "(-4611686018427387904,0]",
                "(0,4611686018427387904]",
                "(4611686018427387904,-9223372036854775808]",
            ]
        );
        let tiny = TokenRange {
            start: Token(0),
            end: Token(3),
        };
        let parts = tiny.split_evenly(3);
        assert_eq!(
            parts
                .iter()
                .map(TokenRange::token_count)
                .collect::<Vec<_>>(),
            [1, 1, 1]
        );
    }

    fn arb_range() -> impl Strategy<Value = TokenRange> {
        let arb_token = prop_oneof![
            any::<i64>(),
            Just(i64::MIN),
            Just(i64::MAX),
            -3i64..3,
            Just(i64::MIN + 1),
        ]
        .prop_map(Token);
        (arb_token.clone(), arb_token).prop_map(|(start, end)| TokenRange { start, end })
    }

    fn arb_token() -> impl Strategy<Value = Token> {
        prop_oneof![any::<i64>(), Just(i64::MIN), Just(i64::MAX), -3i64..3].prop_map(Token)
    }

    proptest! {
        #[test]
        fn split_parts_partition_the_range(
            range in arb_range(),
            n_parts in 1usize..9,
            probes in proptest::collection::vec(arb_token(), 1..16),
        ) {
            prop_assume!(range.token_count() >= n_parts as u128);
            let parts = range.split_evenly(n_parts);
            prop_assert_eq!(parts.len(), n_parts);
            let total: u128 = parts.iter().map(TokenRange::token_count).sum();
            prop_assert_eq!(total, range.token_count());
            let count_max = parts.iter().map(TokenRange::token_count).max().unwrap_or(0);
            let count_min = parts.iter().map(TokenRange::token_count).min().unwrap_or(0);
            prop_assert!(count_max - count_min <= 1);
            for pair in parts.windows(2) {
                prop_assert_eq!(pair[0].end, pair[1].start);
            }
            let mut probes = probes;
            probes.extend(parts.iter().flat_map(|part| {
                [part.start, part.end, Token(part.end.0.wrapping_add(1))]
            }));
            for probe in probes {
                let n_containing = parts.iter().filter(|part| part.contains(probe)).count();
                prop_assert_eq!(n_containing, usize::from(range.contains(probe)), "{}", probe);
            }
        }

        #[test]
        fn hashing_never_panics_and_never_gives_the_minimum(
            key in proptest::collection::vec(any::<u8>(), 1..80),
        ) {
            prop_assert_ne!(token(&key), MIN_TOKEN);
        }
    }
}
