//! Known-answer tests against published RFC 6962 data.
//!
//! Source: the transparency-dev/merkle Go module (the Trillian / Certificate
//! Transparency Merkle library), https://github.com/transparency-dev/merkle:
//! - testonly/constants.go (commit 582a6ad190b6848f1d26f8bf08ddef29955d9db1):
//!   LeafInputs, NodeHashes, RootHashes, EmptyRootHash.
//! - testonly/reference_test.go (commit 141d627eab770a7e9a2514f46a8b6338e6d90874):
//!   TestRefInclusionProof and TestRefConsistencyProof expected proofs.

// Test helpers outside #[test] fns may fail loudly too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use gavel_ledger::merkle::{
    leaf_hash, node_hash, verify_consistency, verify_inclusion, Hash, MerkleTree, EMPTY_ROOT,
};

fn hd(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn h(s: &str) -> Hash {
    hd(s).try_into().unwrap()
}

fn leaf_inputs() -> Vec<Vec<u8>> {
    [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ]
    .iter()
    .map(|s| hd(s))
    .collect()
}

const ROOTS: [&str; 9] = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
];

const LEVEL0: [&str; 8] = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
    "0298d122906dcfc10892cb53a73992fc5b9f493ea4c9badb27b791b4127a7fe7",
    "07506a85fd9dd2f120eb694f86011e5bb4662e5c415a62917033d4a9624487e7",
    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
    "4271a26be0d8a84f0bd54c8c302e7cb3a3b5d1fa6780a40bcce2873477dab658",
    "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
    "46f6ffadd3d06a09ff3c5860d2755c8b9819db7df44251788c7d8e3180de8eb1",
];
const LEVEL1: [&str; 4] = [
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
    "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
];
const LEVEL2: [&str; 2] = [
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
];

fn tree(size: usize) -> MerkleTree {
    MerkleTree::from_leaf_hashes(leaf_inputs()[..size].iter().map(|l| leaf_hash(l)))
}

#[test]
fn empty_root_matches() {
    assert_eq!(EMPTY_ROOT, h(ROOTS[0]));
}

#[test]
fn leaf_and_node_hashes_match() {
    let leaves: Vec<Hash> = leaf_inputs().iter().map(|l| leaf_hash(l)).collect();
    for (i, want) in LEVEL0.iter().enumerate() {
        assert_eq!(leaves[i], h(want), "leaf {i}");
    }
    for (i, want) in LEVEL1.iter().enumerate() {
        assert_eq!(
            node_hash(&leaves[2 * i], &leaves[2 * i + 1]),
            h(want),
            "level 1 node {i}"
        );
    }
    for (i, want) in LEVEL2.iter().enumerate() {
        assert_eq!(
            node_hash(&h(LEVEL1[2 * i]), &h(LEVEL1[2 * i + 1])),
            h(want),
            "level 2 node {i}"
        );
    }
}

#[test]
fn roots_for_every_size_match() {
    let full = tree(8);
    for (size, want) in ROOTS.iter().enumerate() {
        assert_eq!(tree(size).root(), h(want), "root of size {size}");
        assert_eq!(
            full.root_at(size as u64),
            Some(h(want)),
            "root_at({size}) of the 8-leaf tree"
        );
    }
}

#[test]
fn inclusion_proofs_match_reference() {
    let cases: [(u64, u64, &[&str]); 6] = [
        (0, 1, &[]),
        (
            0,
            2,
            &["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"],
        ),
        (
            1,
            2,
            &["6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"],
        ),
        (
            2,
            3,
            &["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"],
        ),
        (
            1,
            5,
            &[
                "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            ],
        ),
        (
            5,
            8,
            &[
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ],
        ),
    ];
    let full = tree(8);
    for (index, size, want) in cases {
        let want: Vec<Hash> = want.iter().map(|s| h(s)).collect();
        let got = full.inclusion_proof(index, size).unwrap();
        assert_eq!(got, want, "inclusion proof {index}:{size}");
        let leaf = leaf_hash(&leaf_inputs()[index as usize]);
        verify_inclusion(&leaf, index, size, &got, &h(ROOTS[size as usize])).unwrap();
    }
    // Index 0 of size 8 (also from TestRefInclusionProof).
    let p = full.inclusion_proof(0, 8).unwrap();
    assert_eq!(p, vec![h(LEVEL0[1]), h(LEVEL1[1]), h(LEVEL2[1])]);
}

#[test]
fn consistency_proofs_match_reference() {
    let cases: [(u64, u64, &[&str]); 4] = [
        (1, 1, &[]),
        (
            1,
            8,
            &[
                "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
            ],
        ),
        (
            2,
            5,
            &[
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            ],
        ),
        (
            6,
            8,
            &[
                "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ],
        ),
    ];
    let full = tree(8);
    for (old, new, want) in cases {
        let want: Vec<Hash> = want.iter().map(|s| h(s)).collect();
        let got = full.consistency_proof(old, new).unwrap();
        assert_eq!(got, want, "consistency proof {old}:{new}");
        verify_consistency(
            old,
            new,
            &h(ROOTS[old as usize]),
            &h(ROOTS[new as usize]),
            &got,
        )
        .unwrap();
    }
}

#[test]
fn every_pair_of_reference_sizes_is_consistent_and_tamper_fails() {
    let full = tree(8);
    for new in 1..=8u64 {
        for old in 1..=new {
            let p = full.consistency_proof(old, new).unwrap();
            verify_consistency(
                old,
                new,
                &h(ROOTS[old as usize]),
                &h(ROOTS[new as usize]),
                &p,
            )
            .unwrap();
            if old < new {
                // Swapping the roots must fail.
                assert!(verify_consistency(
                    old,
                    new,
                    &h(ROOTS[new as usize]),
                    &h(ROOTS[old as usize]),
                    &p
                )
                .is_err());
            }
        }
    }
}
