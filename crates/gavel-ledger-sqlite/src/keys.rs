//! The checkpoint signing key on disk: one line in the signed-note private key
//! format, readable by the owner only.

use crate::Error;
use gavel_ledger::NoteSigner;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;

/// Creates a new Ed25519 signing key for the log named `origin` at `path`
/// (which must not exist), with mode 0600, synced to disk.
pub fn create_signing_key(path: impl AsRef<Path>, origin: &str) -> Result<NoteSigner, Error> {
    let signer = NoteSigner::generate(origin).map_err(Error::Note)?;
    let mut opts = OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // Set at creation so the secret is never readable by others, even
        // briefly.
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(format!("{}\n", signer.to_private_key()).as_bytes())?;
    f.sync_all()?;
    Ok(signer)
}

/// Loads a signing key written by [`create_signing_key`]. Refuses a key file
/// that group or others can access: a leaked key lets anyone forge history.
pub fn load_signing_key(path: impl AsRef<Path>) -> Result<NoteSigner, Error> {
    let path = path.as_ref();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)?.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(Error::Invalid(format!(
                "{} has mode {:o}; the ledger key must be owner-only (chmod 600)",
                path.display(),
                mode & 0o777
            )));
        }
    }
    let text = std::fs::read_to_string(path)?;
    NoteSigner::from_private_key(text.trim()).map_err(Error::Note)
}

/// The verifier key to publish (`gavel audit pubkey`):
/// `<origin>+<keyid>+<base64(0x01 || Ed25519 public key)>`.
pub fn public_key(signer: &NoteSigner) -> String {
    signer.verifier().to_string()
}
