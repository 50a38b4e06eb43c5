//! Arbitrary bytes as a stored ledger record: the one-pass canonical check that verification
//! runs (`Record::check_canonical`) must give the answer of parsing and writing again
//! (`Record::from_canonical`), and neither may panic.
#![no_main]

use gavel_ledger::Record;
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
});
