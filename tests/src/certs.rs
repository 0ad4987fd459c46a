//! Throwaway X.509 certificates made with the `openssl` command, shared by
//! the QEMU system tests, `daxbox-serve`'s real-client tests and
//! `cargo xtask run --tls`: ECDSA P-256 keys, a CA, and leaf certificates
//! signed by a CA whose certificate and key are files (the `net/tls` test
//! CA, or one made by [`new_ca`]).
//!
//! Folders are laid out the way libnbd's `tls-certificates` and QEMU's
//! `tls-creds-x509` read them: `ca-cert.pem`, then `server-cert.pem` /
//! `server-key.pem` and `client-cert.pem` / `client-key.pem`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs `openssl ARGS` in `dir`; the error names the command and carries
/// openssl's message.
pub fn openssl(dir: &Path, args: &[&str]) -> Result<(), String> {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .map_err(|error| format!("openssl: {error}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "openssl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// A new ECDSA P-256 private key in `dir/name` (PKCS#8 PEM).
pub fn new_key(dir: &Path, name: &str) -> Result<(), String> {
    openssl(
        dir,
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            name,
        ],
    )
}

/// A self-signed CA in `dir` (`ca-cert.pem`, `ca-key.pem`) with common
/// name `cn`, valid for `days`.
pub fn new_ca(dir: &Path, cn: &str, days: u32) -> Result<(), String> {
    new_key(dir, "ca-key.pem")?;
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-new",
            "-key",
            "ca-key.pem",
            "-subj",
            &format!("/CN={cn}"),
            "-days",
            &days.to_string(),
            "-out",
            "ca-cert.pem",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    )
}

/// The CA that signs a leaf: its certificate and key files.
#[derive(Clone, Copy, Debug)]
pub struct Ca<'a> {
    /// The CA certificate (PEM).
    pub cert: &'a Path,
    /// The CA private key (PEM).
    pub key: &'a Path,
}

/// A leaf certificate `dir/NAME-cert.pem` with key `dir/NAME-key.pem`,
/// common name `cn`, the X.509v3 `extensions` (openssl extension-file
/// lines), valid for `days`, signed by `ca`. The CSR, extension file and
/// serial file are removed afterwards.
pub fn sign(
    dir: &Path,
    ca: Ca<'_>,
    name: &str,
    cn: &str,
    extensions: &str,
    days: u32,
) -> Result<(), String> {
    let key = format!("{name}-key.pem");
    let csr = format!("{name}.csr");
    let ext = format!("{name}.ext");
    let serial = format!("{name}.srl");
    new_key(dir, &key)?;
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-key",
            &key,
            "-subj",
            &format!("/CN={cn}"),
            "-out",
            &csr,
        ],
    )?;
    fs::write(dir.join(&ext), extensions)
        .map_err(|e| format!("{}: {e}", dir.join(&ext).display()))?;
    let result = openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca.cert.display().to_string(),
            "-CAkey",
            &ca.key.display().to_string(),
            "-CAcreateserial",
            "-CAserial",
            &serial,
            "-days",
            &days.to_string(),
            "-extfile",
            &ext,
            "-out",
            &format!("{name}-cert.pem"),
        ],
    );
    for file in [&csr, &ext, &serial] {
        let _ = fs::remove_file(dir.join(file));
    }
    result
}

/// A client folder `dir` (`ca-cert.pem`, `client-cert.pem`,
/// `client-key.pem`) for a client certificate with common name `cn`
/// signed by `ca` (valid 2 days).
pub fn client_folder(dir: &Path, ca: Ca<'_>, cn: &str) -> Result<PathBuf, String> {
    fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    fs::copy(ca.cert, dir.join("ca-cert.pem"))
        .map_err(|e| format!("{}: {e}", ca.cert.display()))?;
    sign(dir, ca, "client", cn, "extendedKeyUsage=clientAuth\n", 2)?;
    Ok(dir.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn have_openssl() -> bool {
        Command::new("openssl").arg("version").output().is_ok()
    }

    #[test]
    fn a_client_folder_verifies_against_its_ca_and_names_the_client() {
        if !have_openssl() {
            eprintln!("openssl missing: cannot run (CI installs it)");
            return;
        }
        let dir = std::env::temp_dir().join(format!("daxbox-certs-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        new_ca(&dir, "test CA", 1).unwrap();
        let ca = Ca {
            cert: &dir.join("ca-cert.pem"),
            key: &dir.join("ca-key.pem"),
        };
        let client = client_folder(&dir.join("alice"), ca, "alice").unwrap();
        let out = Command::new("openssl")
            .args(["verify", "-CAfile", "ca-cert.pem", "client-cert.pem"])
            .current_dir(&client)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let subject = Command::new("openssl")
            .args(["x509", "-noout", "-subject", "-in", "client-cert.pem"])
            .current_dir(&client)
            .output()
            .unwrap();
        assert!(String::from_utf8_lossy(&subject.stdout).contains("CN = alice"));
        // Only the three files a client folder holds are left.
        let mut names: Vec<_> = fs::read_dir(&client)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["ca-cert.pem", "client-cert.pem", "client-key.pem"]);
        // A bad CA path is an error naming openssl, not a panic.
        let missing = Ca {
            cert: &dir.join("ca-cert.pem"),
            key: &dir.join("nope.pem"),
        };
        let error = client_folder(&dir.join("bob"), missing, "bob").unwrap_err();
        assert!(error.starts_with("openssl x509"), "{error}");
        let _ = fs::remove_dir_all(&dir);
    }
}
