//! Where the registry is: `--url`, `PIERONE_URL`, or `~/.config/pierone/pierone.yaml`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::Error;

#[derive(Debug, Default, Serialize, Deserialize)]
struct ConfigFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    url: Option<String>,
    /// Keys written by other versions are kept.
    #[serde(flatten)]
    rest: serde_yaml_ng::Mapping,
}

pub(crate) fn home() -> Option<PathBuf> {
    std::env::var_os("HOME").map(PathBuf::from)
}

fn config_path() -> Option<PathBuf> {
    std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| home().map(|h| h.join(".config")))
        .map(|d| d.join("pierone").join("pierone.yaml"))
}

/// A URL without a scheme means HTTPS; trailing slashes are dropped.
pub fn normalize_url(url: &str) -> String {
    let url = url.trim().trim_end_matches('/');
    if url.contains("://") {
        url.to_owned()
    } else {
        format!("https://{url}")
    }
}

/// The registry URL: the flag (clap also reads `PIERONE_URL` into it), else the config file.
pub fn resolve_url(flag: Option<&str>) -> Result<String, Error> {
    if let Some(u) = flag.filter(|u| !u.trim().is_empty()) {
        return Ok(normalize_url(u));
    }
    let Some(path) = config_path() else {
        return Err(Error::NoUrl);
    };
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Err(Error::NoUrl);
    };
    let cfg: ConfigFile = serde_yaml_ng::from_str(&text).map_err(|e| Error::File {
        path: path.display().to_string(),
        why: e.to_string(),
    })?;
    cfg.url.map(|u| normalize_url(&u)).ok_or(Error::NoUrl)
}

/// Remember `url` in the config file, keeping whatever else is in it.
pub fn save_url(url: &str) -> Result<(), Error> {
    let path = config_path().ok_or(Error::NoUrl)?;
    let err = |why: String| Error::File {
        path: path.display().to_string(),
        why,
    };
    let mut cfg: ConfigFile = match std::fs::read_to_string(&path) {
        Ok(text) => serde_yaml_ng::from_str(&text).map_err(|e| err(e.to_string()))?,
        Err(_) => ConfigFile::default(),
    };
    cfg.url = Some(url.to_owned());
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
    }
    let text = serde_yaml_ng::to_string(&cfg).map_err(|e| err(e.to_string()))?;
    std::fs::write(&path, text).map_err(|e| err(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            normalize_url("registry.example.com"),
            "https://registry.example.com"
        );
        assert_eq!(
            normalize_url("http://127.0.0.1:5000/"),
            "http://127.0.0.1:5000"
        );
        assert_eq!(normalize_url(" https://r.example "), "https://r.example");
    }
}
