//! The RADIUS shared secret of the zero-configuration mode, generated once into the data
//! directory with owner-only permissions.

use std::io::Write;
use std::path::Path;

use rand::RngCore;
use zeroize::Zeroizing;

/// Reads `<dir>/radius-secret`, creating it with 24 random bytes (hex) if absent.
pub fn load_or_create(dir: &Path) -> std::io::Result<Zeroizing<Vec<u8>>> {
    let path = dir.join("radius-secret");
    match std::fs::read(&path) {
        Ok(bytes) => {
            let text = Zeroizing::new(bytes);
            let trimmed: Vec<u8> = text.trim_ascii().to_vec();
            if trimmed.is_empty() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{} is empty", path.display()),
                ));
            }
            Ok(Zeroizing::new(trimmed))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut raw = Zeroizing::new([0u8; 24]);
            rand::rngs::OsRng.fill_bytes(raw.as_mut());
            let text = Zeroizing::new(hex::encode(raw.as_ref()).into_bytes());
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create_new(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                opts.mode(0o600);
            }
            let mut f = opts.open(&path)?;
            f.write_all(&text)?;
            f.write_all(b"\n")?;
            f.sync_all()?;
            Ok(text)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn generated_once_then_reused() {
        let dir = tempfile::tempdir().unwrap();
        let a = super::load_or_create(dir.path()).unwrap();
        let b = super::load_or_create(dir.path()).unwrap();
        assert_eq!(a.len(), 48);
        assert_eq!(*a, *b);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("radius-secret"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0);
        }
    }
}
