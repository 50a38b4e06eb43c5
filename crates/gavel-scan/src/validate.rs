//! Checksums and range rules that turn pattern matches into findings.

/// Luhn check over ASCII digits (other bytes are ignored, so grouped numbers can be passed).
pub fn luhn_valid(number: &[u8]) -> bool {
    let mut sum = 0u32;
    let mut count = 0usize;
    for &c in number.iter().rev().filter(|c| c.is_ascii_digit()) {
        let d = u32::from(c - b'0');
        sum += if count % 2 == 1 {
            let x = d * 2;
            if x > 9 {
                x - 9
            } else {
                x
            }
        } else {
            d
        };
        count += 1;
    }
    count >= 2 && sum % 10 == 0
}

/// Card numbers from issuers that exist (IIN ranges) with the lengths they issue. JCB is taken
/// as the whole 35 range (officially 3528-3589) because generators and test data use all of it.
pub(crate) fn card_brand_ok(digits: &[u8]) -> bool {
    let n = digits.len();
    let prefix = |k: usize| -> u32 {
        digits
            .iter()
            .take(k)
            .fold(0u32, |acc, &c| acc * 10 + u32::from(c.wrapping_sub(b'0')))
    };
    let p1 = prefix(1);
    let p2 = prefix(2);
    let p3 = prefix(3);
    let p4 = prefix(4);
    let p6 = prefix(6);
    match p1 {
        4 => matches!(n, 13 | 16 | 19),
        5 => (51..=55).contains(&p2) && n == 16,
        2 => (2221..=2720).contains(&p4) && n == 16,
        3 => {
            (matches!(p2, 34 | 37) && n == 15)
                || ((300..=305).contains(&p3) || matches!(p2, 36 | 38 | 39))
                    && (14..=19).contains(&n)
                || p2 == 35 && (16..=19).contains(&n)
        }
        6 => {
            (p4 == 6011
                || p2 == 65
                || (644..=649).contains(&p3)
                || (622126..=622925).contains(&p6)
                || p2 == 62)
                && (16..=19).contains(&n)
        }
        _ => false,
    }
}

/// IBAN length per country (ISO 13616 registry, SWIFT release 2024).
fn iban_length(country: &[u8]) -> Option<usize> {
    const TABLE: &[(&[u8; 2], usize)] = &[
        (b"AD", 24),
        (b"AE", 23),
        (b"AL", 28),
        (b"AT", 20),
        (b"AZ", 28),
        (b"BA", 20),
        (b"BE", 16),
        (b"BG", 22),
        (b"BH", 22),
        (b"BI", 27),
        (b"BR", 29),
        (b"BY", 28),
        (b"CH", 21),
        (b"CR", 22),
        (b"CY", 28),
        (b"CZ", 24),
        (b"DE", 22),
        (b"DJ", 27),
        (b"DK", 18),
        (b"DO", 28),
        (b"EE", 20),
        (b"EG", 29),
        (b"ES", 24),
        (b"FI", 18),
        (b"FK", 18),
        (b"FO", 18),
        (b"FR", 27),
        (b"GB", 22),
        (b"GE", 22),
        (b"GI", 23),
        (b"GL", 18),
        (b"GR", 27),
        (b"GT", 28),
        (b"HR", 21),
        (b"HU", 28),
        (b"IE", 22),
        (b"IL", 23),
        (b"IQ", 23),
        (b"IS", 26),
        (b"IT", 27),
        (b"JO", 30),
        (b"KW", 30),
        (b"KZ", 20),
        (b"LB", 28),
        (b"LC", 32),
        (b"LI", 21),
        (b"LT", 20),
        (b"LU", 20),
        (b"LV", 21),
        (b"LY", 25),
        (b"MC", 27),
        (b"MD", 24),
        (b"ME", 22),
        (b"MK", 19),
        (b"MN", 20),
        (b"MR", 27),
        (b"MT", 31),
        (b"MU", 30),
        (b"NI", 28),
        (b"NL", 18),
        (b"NO", 15),
        (b"OM", 23),
        (b"PK", 24),
        (b"PL", 28),
        (b"PS", 29),
        (b"PT", 25),
        (b"QA", 29),
        (b"RO", 24),
        (b"RS", 22),
        (b"RU", 33),
        (b"SA", 24),
        (b"SC", 31),
        (b"SD", 18),
        (b"SE", 24),
        (b"SI", 19),
        (b"SK", 24),
        (b"SM", 27),
        (b"SO", 23),
        (b"ST", 25),
        (b"SV", 28),
        (b"TL", 23),
        (b"TN", 24),
        (b"TR", 26),
        (b"UA", 29),
        (b"VA", 22),
        (b"VG", 24),
        (b"XK", 20),
        (b"YE", 30),
    ];
    TABLE
        .iter()
        .find(|(c, _)| c.as_slice() == country)
        .map(|&(_, n)| n)
}

/// IBAN validation: country length and ISO 7064 mod 97-10. Spaces are ignored; letters must be
/// upper case (the electronic format).
pub fn iban_valid(iban: &[u8]) -> bool {
    let mut compact = [0u8; 34];
    let mut n = 0;
    for &c in iban.iter().filter(|&&c| c != b' ') {
        let Some(slot) = compact.get_mut(n) else {
            return false;
        };
        if !(c.is_ascii_uppercase() || c.is_ascii_digit()) {
            return false;
        }
        *slot = c;
        n += 1;
    }
    let compact = compact.get(..n).unwrap_or_default();
    let (Some(country), Some(check)) = (compact.get(..2), compact.get(2..4)) else {
        return false;
    };
    if !country.iter().all(u8::is_ascii_uppercase) || !check.iter().all(u8::is_ascii_digit) {
        return false;
    }
    if iban_length(country) != Some(n) {
        return false;
    }
    // Move the first four characters to the end, letters become 10..35, remainder mod 97 == 1.
    let rearranged = compact
        .get(4..)
        .unwrap_or_default()
        .iter()
        .chain(compact.get(..4).unwrap_or_default());
    let mut rem = 0u32;
    for &c in rearranged {
        if c.is_ascii_digit() {
            rem = (rem * 10 + u32::from(c - b'0')) % 97;
        } else {
            rem = (rem * 100 + u32::from(c - b'A') + 10) % 97;
        }
    }
    rem == 1
}

/// US SSN rules (SSA): area not 000, 666 or 900-999; group not 00; serial not 0000. Input is
/// the nine digits.
pub fn us_ssn_valid(digits: &[u8]) -> bool {
    if digits.len() != 9 || !digits.iter().all(u8::is_ascii_digit) {
        return false;
    }
    let num = |r: std::ops::Range<usize>| {
        digits
            .get(r)
            .unwrap_or_default()
            .iter()
            .fold(0u32, |acc, &c| acc * 10 + u32::from(c - b'0'))
    };
    let (area, group, serial) = (num(0..3), num(3..5), num(5..9));
    area != 0 && area != 666 && area < 900 && group != 0 && serial != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn luhn_published_test_numbers() {
        // Test card numbers published by payment processors (Stripe / PayPal test docs).
        for n in [
            "4111111111111111",
            "4242424242424242",
            "5555555555554444",
            "5105105105105100",
            "378282246310005",
            "371449635398431",
            "6011111111111117",
            "3530111333300000",
            "30569309025904",
            "79927398713", // the Luhn example from ISO/IEC 7812 literature
        ] {
            assert!(luhn_valid(n.as_bytes()), "{n}");
        }
        for n in ["4111111111111112", "79927398710", "1234567812345678", "0"] {
            assert!(!luhn_valid(n.as_bytes()), "{n}");
        }
    }

    #[test]
    fn card_brands() {
        assert!(card_brand_ok(b"4111111111111111"));
        assert!(card_brand_ok(b"378282246310005"));
        assert!(card_brand_ok(b"2223003122003222"));
        assert!(!card_brand_ok(b"1234567812345670"));
        assert!(!card_brand_ok(b"37828224631000")); // Amex is 15 digits
    }

    #[test]
    fn iban_registry_examples() {
        // Examples from the SWIFT IBAN registry.
        for iban in [
            "GB29 NWBK 6016 1331 9268 19",
            "DE89370400440532013000",
            "FR1420041010050500013M02606",
            "NL91ABNA0417164300",
            "BE68539007547034",
            "CH9300762011623852957",
            "NO9386011117947",
            "MT84MALT011000012345MTLCAST001S",
            "IT60X0542811101000000123456",
            "ES9121000418450200051332",
        ] {
            assert!(iban_valid(iban.as_bytes()), "{iban}");
        }
        for iban in [
            "GB29 NWBK 6016 1331 9268 18", // check digit
            "DE8937040044053201300",       // length
            "XX89370400440532013000",      // country
            "gb29nwbk60161331926819",      // lower case
        ] {
            assert!(!iban_valid(iban.as_bytes()), "{iban}");
        }
    }

    #[test]
    fn ssn_rules() {
        assert!(us_ssn_valid(b"536221234"));
        for bad in [
            "000123456",
            "666123456",
            "900123456",
            "999123456",
            "123004567",
            "123450000",
            "12345678",
        ] {
            assert!(!us_ssn_valid(bad.as_bytes()), "{bad}");
        }
    }
}
