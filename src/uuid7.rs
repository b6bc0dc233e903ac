//! UUIDs: parsing, formatting and a monotonic UUIDv7 generator (RFC 9562).

use std::fmt;

/// Each byte's value as a hex digit (either case), or 0xff.
const HEX_VALUE: [u8; 256] = {
    let mut table = [0xffu8; 256];
    let mut c = 0;
    while c < 256 {
        table[c] = match c as u8 {
            d @ b'0'..=b'9' => d - b'0',
            d @ b'a'..=b'f' => d - b'a' + 10,
            d @ b'A'..=b'F' => d - b'A' + 10,
            _ => 0xff,
        };
        c += 1;
    }
    table
};

/// A 128-bit UUID in network byte order.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Uuid(pub [u8; 16]);

impl Uuid {
    /// Parses the canonical 36-character form (`8-4-4-4-12` hex digits, either case).
    ///
    /// Returns `None` for anything else: braces, URNs and the 32-digit form are refused so that every id
    /// stored by the batcher has one spelling.
    pub fn parse(s: &str) -> Option<Uuid> {
        Uuid::parse_bytes(s.as_bytes())
    }

    /// [`Uuid::parse`] of text given as bytes.
    pub fn parse_bytes(b: &[u8]) -> Option<Uuid> {
        /// Where each byte's two hex digits start in the canonical form.
        const DIGITS: [usize; 16] = [0, 2, 4, 6, 9, 11, 14, 16, 19, 21, 24, 26, 28, 30, 32, 34];
        if b.len() != 36 || [8, 13, 18, 23].iter().any(|&i| b[i] != b'-') {
            return None;
        }
        let mut out = [0u8; 16];
        for (byte, &i) in out.iter_mut().zip(&DIGITS) {
            let (high, low) = (HEX_VALUE[b[i] as usize], HEX_VALUE[b[i + 1] as usize]);
            if (high | low) > 0x0f {
                return None;
            }
            *byte = high << 4 | low;
        }
        Some(Uuid(out))
    }

    /// The milliseconds-since-epoch prefix of a version 7 UUID.
    pub fn v7_millis(&self) -> u64 {
        let mut ms = [0u8; 8];
        ms[2..].copy_from_slice(&self.0[..6]);
        u64::from_be_bytes(ms)
    }

    /// The version nibble (7 for ids made by [`Uuid7Generator`]).
    pub fn version(&self) -> u8 {
        self.0[6] >> 4
    }
}

impl fmt::Display for Uuid {
    /// Formats as lower-case canonical text, e.g. `01932c07-8f3a-7c3e-9b1d-3f0a2c4e5d6f`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = [0u8; 36];
        let mut j = 0;
        for (i, byte) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                out[j] = b'-';
                j += 1;
            }
            out[j] = HEX[(byte >> 4) as usize];
            out[j + 1] = HEX[(byte & 0x0f) as usize];
            j += 2;
        }
        // Only ASCII hex digits and dashes were written.
        f.write_str(std::str::from_utf8(&out).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Makes version 7 UUIDs that are strictly increasing in call order.
///
/// Layout (RFC 9562, section 6.2, method 1): 48 bits of Unix milliseconds, the version, a 12-bit counter
/// (`rand_a`), the variant and 62 random bits. Within one millisecond the counter increases by one; it is
/// seeded with a random value below 2048 at each new millisecond so that roughly 2048 ids per millisecond
/// fit before it overflows. On overflow, or when the wall clock steps back, the timestamp is carried forward
/// from the last id instead, so ids never repeat or decrease, and stay within a few milliseconds of the clock.
pub struct Uuid7Generator {
    last_ms: u64,
    counter: u16,
    rng: fastrand::Rng,
}

impl Default for Uuid7Generator {
    fn default() -> Self {
        Self::new()
    }
}

impl Uuid7Generator {
    const COUNTER_MAX: u16 = 0x0fff;

    /// A generator seeded from the operating system's randomness.
    pub fn new() -> Self {
        Uuid7Generator {
            last_ms: 0,
            counter: 0,
            rng: fastrand::Rng::new(),
        }
    }

    /// The next id for a moment `now_ms` (Unix milliseconds); greater than every id this generator returned.
    pub fn next(&mut self, now_ms: u64) -> Uuid {
        if now_ms > self.last_ms {
            self.last_ms = now_ms;
            self.counter = self.rng.u16(0..0x0800);
        } else if self.counter < Self::COUNTER_MAX {
            self.counter += 1;
        } else {
            self.last_ms += 1;
            self.counter = self.rng.u16(0..0x0800);
        }
        let ms = self.last_ms & 0xffff_ffff_ffff;
        let rand_b = self.rng.u64(..) & 0x3fff_ffff_ffff_ffff;
        let mut b = [0u8; 16];
        b[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
        b[6] = 0x70 | (self.counter >> 8) as u8;
        b[7] = (self.counter & 0xff) as u8;
        b[8..].copy_from_slice(&(rand_b | 0x8000_0000_0000_0000).to_be_bytes());
        Uuid(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_format_round_trip() {
        let s = "01932c07-8f3a-7c3e-9b1d-3f0a2c4e5d6f";
        let u = Uuid::parse(s).unwrap();
        assert_eq!(u.to_string(), s);
        assert_eq!(
            Uuid::parse("01932C07-8F3A-7C3E-9B1D-3F0A2C4E5D6F").unwrap(),
            u
        );
        assert_eq!(u.version(), 7);
    }

    #[test]
    fn parse_refuses_other_spellings() {
        for bad in [
            "",
            "01932c078f3a7c3e9b1d3f0a2c4e5d6f",
            "{01932c07-8f3a-7c3e-9b1d-3f0a2c4e5d6f}",
            "01932c07-8f3a-7c3e-9b1d-3f0a2c4e5d6g",
            "01932c07_8f3a-7c3e-9b1d-3f0a2c4e5d6f",
            "01932c07-8f3a-7c3e-9b1d-3f0a2c4e5d6f ",
        ] {
            assert!(Uuid::parse(bad).is_none(), "{bad:?} parsed");
        }
    }

    #[test]
    fn ids_increase_within_one_millisecond_and_carry_over_on_overflow() {
        let mut g = Uuid7Generator::new();
        let mut last = g.next(1_700_000_000_000);
        for _ in 0..10_000 {
            let next = g.next(1_700_000_000_000);
            assert!(next > last, "{next} <= {last}");
            assert_eq!(next.version(), 7);
            assert_eq!(next.0[8] >> 6, 0b10, "RFC 9562 variant");
            last = next;
        }
        // 10k ids in one millisecond overflow the 12-bit counter: the timestamp moved ahead.
        assert!(last.v7_millis() > 1_700_000_000_000);
        assert!(last.v7_millis() < 1_700_000_000_000 + 10);
    }

    #[test]
    fn ids_never_decrease_when_the_clock_steps_back() {
        let mut g = Uuid7Generator::new();
        let a = g.next(1_700_000_000_500);
        let b = g.next(1_700_000_000_000);
        assert!(b > a);
        assert_eq!(b.v7_millis(), 1_700_000_000_500);
        let c = g.next(1_700_000_000_501);
        assert!(c > b);
        assert_eq!(c.v7_millis(), 1_700_000_000_501);
    }
}
