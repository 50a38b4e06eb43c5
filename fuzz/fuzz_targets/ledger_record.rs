//! Arbitrary bytes as a stored ledger record: the one-pass canonical check that verification
//! runs (`Record::check_canonical`, and `RecordAids::from_canonical`, which also reads the query
//! columns) must give the answer of parsing and writing again (`Record::from_canonical`), the
//! columns must be the parsed record's, and nothing may panic.
#![no_main]

use gavel_ledger::{Record, RecordAids};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let one_pass = Record::check_canonical(data);
    let reference = Record::from_canonical(data);
    assert_eq!(
        one_pass.is_ok(),
        reference.is_ok(),
        "one pass {one_pass:?}, reference {:?}",
        reference.map(drop)
    );
    let with_aids = RecordAids::from_canonical(data);
    assert_eq!(with_aids.as_ref().map(drop), one_pass.as_ref().map(drop));
    if let (Ok(aids), Ok(record)) = (with_aids, reference) {
        assert_eq!(aids.id, record.id);
        assert_eq!((aids.kind, aids.at_ms), (record.kind, record.at_ms));
        assert_eq!(aids.fields, record.index_fields());
    }
});
