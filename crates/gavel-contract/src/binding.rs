//! Canonical forms and their hashes: a deployment's binding and the contract's version.
//!
//! Canonical form = RFC 8785 (JCS) JSON of the validated model: keys sorted, no whitespace,
//! numbers in their shortest round-trip form. Bound files enter by their SHA-256, so editing a
//! prompt template, a tool schema or an eval set changes the binding even though the YAML did
//! not change.

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::model::{Binding, Contract, ContractVersion, Deployment, Endpoint, Tier};

/// Bumped when the canonical form of a binding changes meaning, so old approvals cannot match
/// bindings computed a different way.
const BINDING_FORMAT: &str = "gavel.binding/1";

#[derive(Serialize)]
struct BindingForm<'a> {
    format: &'static str,
    deployment: &'a Deployment,
    endpoint: Option<&'a Endpoint>,
    use_case: Option<UseCaseTerms<'a>>,
}

/// What an approval of a use case is granted on: changing the domain (so the tier), the
/// population or the data classes needs a new approval. Owner and on-call do not.
#[derive(Serialize)]
struct UseCaseTerms<'a> {
    domain: &'a str,
    tier: Tier,
    population: &'a str,
    data_classes: &'a [String],
}

fn sha256_of_canonical<T: Serialize>(value: &T) -> Result<String, String> {
    let bytes = serde_jcs::to_vec(value)
        .map_err(|e| format!("cannot put the contract in canonical form: {e}"))?;
    Ok(hex::encode(Sha256::digest(bytes)))
}

/// The binding of one deployment as it stands in `contract`.
pub fn binding_of(contract: &Contract, deployment: &Deployment) -> Result<Binding, String> {
    sha256_of_canonical(&BindingForm {
        format: BINDING_FORMAT,
        deployment,
        endpoint: contract.endpoint_of(deployment),
        use_case: contract.use_case_of(deployment).map(|u| UseCaseTerms {
            domain: &u.domain,
            tier: u.tier,
            population: &u.population,
            data_classes: &u.data_classes,
        }),
    })
    .map(Binding)
}

/// Computes every deployment's binding and the contract's version.
pub(crate) fn seal(contract: &mut Contract) -> Result<(), String> {
    let mut bindings = Vec::with_capacity(contract.deployments.len());
    for deployment in contract.deployments.values() {
        bindings.push(binding_of(contract, deployment)?);
    }
    for (deployment, binding) in contract.deployments.values_mut().zip(bindings) {
        deployment.binding = binding;
    }
    contract.version = ContractVersion(sha256_of_canonical(&*contract)?);
    Ok(())
}
