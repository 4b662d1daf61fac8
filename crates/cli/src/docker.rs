//! Registering the credential helper in `~/.docker/config.json` without breaking it.
//!
//! Breaking this file was the top complaint about the original CLI for years: entries for
//! other registries dropped, `credsStore` lost, an empty `credHelpers` entry that broke Docker.
//! So: every key and entry we do not own is kept byte-for-byte in meaning and order, a file we
//! cannot parse is refused rather than overwritten, and the new file replaces the old one
//! atomically with the same permissions.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::Error;

/// `$DOCKER_CONFIG/config.json`, or `~/.docker/config.json`.
pub fn docker_config_path() -> Option<PathBuf> {
    std::env::var_os("DOCKER_CONFIG")
        .map(PathBuf::from)
        .or_else(|| crate::config::home().map(|h| h.join(".docker")))
        .map(|d| d.join("config.json"))
}

/// Point Docker at `docker-credential-pierone` for `host` (`credHelpers[host] = "pierone"`).
pub fn register_helper(path: &Path, host: &str) -> Result<(), Error> {
    let err = |why: String| Error::File {
        path: path.display().to_string(),
        why,
    };
    let mut doc: Map<String, Value> = match std::fs::read_to_string(path) {
        Ok(text) if text.trim().is_empty() => Map::new(),
        Ok(text) => match serde_json::from_str(&text) {
            Ok(Value::Object(m)) => m,
            Ok(_) => return Err(err("not a JSON object; not touching it".into())),
            Err(e) => return Err(err(format!("not valid JSON ({e}); not touching it"))),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Map::new(),
        Err(e) => return Err(err(e.to_string())),
    };
    let helpers = doc
        .entry("credHelpers")
        .or_insert_with(|| Value::Object(Map::new()));
    let Value::Object(helpers) = helpers else {
        return Err(err("credHelpers is not an object; not touching it".into()));
    };
    helpers.insert(host.to_owned(), Value::String("pierone".into()));
    let text = serde_json::to_string_pretty(&Value::Object(doc)).map_err(|e| err(e.to_string()))?;

    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
    let tmp = dir.join(format!(".config.json.pierone-{}", std::process::id()));
    std::fs::write(&tmp, text + "\n").map_err(|e| err(e.to_string()))?;
    let perms = std::fs::metadata(path).map(|m| m.permissions()).ok();
    #[cfg(unix)]
    let perms = perms.or_else(|| Some(std::os::unix::fs::PermissionsExt::from_mode(0o600)));
    if let Some(p) = perms {
        std::fs::set_permissions(&tmp, p).map_err(|e| err(e.to_string()))?;
    }
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        err(e.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_everything_else() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        let before = r#"{
  "auths": {"other.example": {"auth": "dXNlcjpwYXNz"}, "registry.example": {}},
  "credsStore": "desktop",
  "credHelpers": {"gcr.io": "gcloud"},
  "experimental": "enabled"
}"#;
        std::fs::write(&path, before).unwrap();
        register_helper(&path, "registry.example").unwrap();
        let after: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(after["auths"]["other.example"]["auth"], "dXNlcjpwYXNz");
        assert_eq!(after["credsStore"], "desktop");
        assert_eq!(after["credHelpers"]["gcr.io"], "gcloud");
        assert_eq!(after["credHelpers"]["registry.example"], "pierone");
        assert_eq!(after["experimental"], "enabled");
        let keys: Vec<&String> = after.as_object().unwrap().keys().collect();
        assert_eq!(
            keys,
            ["auths", "credsStore", "credHelpers", "experimental"],
            "order kept"
        );
    }

    #[test]
    fn creates_a_missing_file_and_refuses_a_broken_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/config.json");
        register_helper(&path, "r.example").unwrap();
        let v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(v["credHelpers"]["r.example"], "pierone");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        let broken = dir.path().join("broken.json");
        std::fs::write(&broken, "{\"auths\": {").unwrap();
        assert!(register_helper(&broken, "r.example").is_err());
        assert_eq!(std::fs::read_to_string(&broken).unwrap(), "{\"auths\": {");
        std::fs::write(&broken, r#"{"credHelpers": "oops"}"#).unwrap();
        assert!(register_helper(&broken, "r.example").is_err());
    }
}
