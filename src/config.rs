//! `--config FILE` for `kvmrun exec`: a JSON or TOML file whose keys are exec's long option
//! names and whose values are what those options take (a string or number; true/false for a
//! flag; an array for a repeatable option). Options on the command line override the file's
//! (a repeatable option given on the command line replaces the file's whole list).
//!
//! The file is turned into command-line arguments and parsed by the same parser as the command
//! line, so both accept exactly the same things; each key is checked on its own first so an
//! error can name the key and its line.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{ArgAction, CommandFactory, FromArgMatches, Parser};
use serde_json::{Map, Value};

use crate::exec_args::ExecArgs;

/// exec's options as a parser of their own (the words after `kvmrun exec`).
#[derive(Debug, Parser)]
#[command(name = "exec")]
struct ExecCli {
    /// The global option, which may also come after the subcommand.
    #[arg(long, hide = true)]
    log_level: Option<String>,
    #[command(flatten)]
    args: ExecArgs,
}

/// Arguments that are not configuration.
const NOT_CONFIG: [&str; 4] = ["config", "log_level", "command", "help"];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {path} line {line}: {message}")]
    Syntax {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("config {path}: the top level must be a table of options")]
    NotATable { path: PathBuf },
    #[error(
        "config {path} line {line}: unknown key '{key}' (keys are exec's long options: {known})"
    )]
    UnknownKey {
        path: PathBuf,
        line: usize,
        key: String,
        known: String,
    },
    #[error("config {path} line {line}: key '{key}': {message}")]
    BadValue {
        path: PathBuf,
        line: usize,
        key: String,
        message: String,
    },
    #[error("{0}")]
    CommandLine(String),
}

/// exec's arguments with the config file (if any) applied, and the effective configuration.
pub struct Effective {
    pub args: ExecArgs,
    pub config: Map<String, Value>,
}

/// Applies `--config` to `raw`, the words after `kvmrun exec` (or `kvmrun config print`).
pub fn effective(raw: &[OsString]) -> Result<Effective, ConfigError> {
    let parse = |extra: &[OsString]| {
        let argv = std::iter::once(OsString::from("exec"))
            .chain(extra.iter().cloned())
            .chain(raw.iter().cloned());
        ExecCli::command().try_get_matches_from(argv)
    };
    let first = parse(&[]).map_err(|e| ConfigError::CommandLine(first_line(&e.to_string())))?;
    let mut extra = Vec::new();
    if let Some(path) = first.get_one::<PathBuf>("config") {
        let table = load(path)?;
        for (key, value, line) in table {
            let words = config_words(path, &key, &value, line)?;
            if first.value_source(&arg_id(&key)) == Some(ValueSource::CommandLine) {
                continue;
            }
            extra.extend(words);
        }
    }
    let matches =
        parse(&extra).map_err(|e| ConfigError::CommandLine(first_line(&e.to_string())))?;
    let cli = ExecCli::from_arg_matches(&matches)
        .map_err(|e| ConfigError::CommandLine(first_line(&e.to_string())))?;
    Ok(Effective {
        args: cli.args,
        config: describe(&matches),
    })
}

fn first_line(s: &str) -> String {
    s.lines()
        .next()
        .unwrap_or("")
        .trim_start_matches("error: ")
        .to_string()
}

fn arg_id(key: &str) -> String {
    key.replace('-', "_")
}

/// The configurable options: (long name, takes a value, repeatable).
fn options() -> Vec<(String, bool, bool)> {
    ExecCli::command()
        .get_arguments()
        .filter(|a| !NOT_CONFIG.contains(&a.get_id().as_str()))
        .filter_map(|a| {
            let long = a.get_long()?.to_string();
            let takes_value = a.get_action().takes_values();
            let repeat = matches!(a.get_action(), ArgAction::Append);
            Some((long, takes_value, repeat))
        })
        .collect()
}

/// The command-line words for one config entry, checked by the real parser.
fn config_words(
    path: &Path,
    key: &str,
    value: &Value,
    line: usize,
) -> Result<Vec<OsString>, ConfigError> {
    let opts = options();
    let Some((long, takes_value, repeat)) = opts.iter().find(|(l, ..)| l == key) else {
        return Err(ConfigError::UnknownKey {
            path: path.into(),
            line,
            key: key.into(),
            known: opts
                .iter()
                .map(|o| o.0.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        });
    };
    let bad = |message: String| ConfigError::BadValue {
        path: path.into(),
        line,
        key: key.into(),
        message,
    };
    let scalar = |v: &Value| match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        _ => Err(bad(format!("expected a string or a number, got {v}"))),
    };
    let flag = format!("--{long}");
    let mut words: Vec<OsString> = Vec::new();
    match (value, takes_value, repeat) {
        (Value::Bool(true), false, _) => words.push(flag.into()),
        (Value::Bool(false), false, _) => {}
        (_, false, _) => return Err(bad(format!("expected true or false, got {value}"))),
        (Value::Array(items), true, true) => {
            for item in items {
                words.push(flag.clone().into());
                words.push(scalar(item)?.into());
            }
        }
        (Value::Array(_), true, false) => return Err(bad("takes one value, not a list".into())),
        (v, true, _) => {
            words.push(flag.into());
            words.push(scalar(v)?.into());
        }
    }
    let argv = std::iter::once(OsString::from("exec")).chain(words.iter().cloned());
    ExecCli::command()
        .try_get_matches_from(argv)
        .map_err(|e| bad(first_line(&e.to_string())))?;
    Ok(words)
}

/// Reads a config file into (key, value, line) entries, in file order.
fn load(path: &Path) -> Result<Vec<(String, Value, usize)>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.into(),
        source,
    })?;
    let is_toml = match path.extension().and_then(|e| e.to_str()) {
        Some("toml") => true,
        Some("json") => false,
        _ => !text.trim_start().starts_with('{'),
    };
    let value: Value = if is_toml {
        let table: toml::Table = toml::from_str(&text).map_err(|e| ConfigError::Syntax {
            path: path.into(),
            line: e.span().map_or(1, |s| line_of(&text, s.start)),
            message: e.message().to_string(),
        })?;
        serde_json::to_value(table).map_err(|e| ConfigError::Syntax {
            path: path.into(),
            line: 1,
            message: e.to_string(),
        })?
    } else {
        serde_json::from_str(&text).map_err(|e| ConfigError::Syntax {
            path: path.into(),
            line: e.line(),
            message: e.to_string(),
        })?
    };
    let Value::Object(map) = value else {
        return Err(ConfigError::NotATable { path: path.into() });
    };
    let mut entries: Vec<(String, Value, usize)> = map
        .into_iter()
        .map(|(k, v)| {
            let line = key_line(&text, &k, is_toml).unwrap_or(1);
            (k, v, line)
        })
        .collect();
    entries.sort_by_key(|e| e.2);
    Ok(entries)
}

/// 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// The line where `key` is defined: `"key":` in JSON, `key =` (or `"key" =`) in TOML.
fn key_line(text: &str, key: &str, is_toml: bool) -> Option<usize> {
    let quoted = format!("\"{key}\"");
    for (i, line) in text.lines().enumerate() {
        if is_toml {
            let t = line.trim_start();
            let rest = t
                .strip_prefix(&quoted)
                .or_else(|| t.strip_prefix(key))
                .map(str::trim_start);
            if rest.is_some_and(|r| r.starts_with('=')) {
                return Some(i + 1);
            }
        } else {
            let mut from = 0;
            while let Some(at) = line[from..].find(&quoted) {
                let after = &line[from + at + quoted.len()..];
                if after.trim_start().starts_with(':') {
                    return Some(i + 1);
                }
                from += at + quoted.len();
            }
        }
    }
    None
}

/// The effective configuration: every option's value (given or default) in config-file form.
fn describe(matches: &clap::ArgMatches) -> Map<String, Value> {
    let mut out = Map::new();
    for (long, takes_value, repeat) in options() {
        let id = arg_id(&long);
        if !takes_value {
            out.insert(long, Value::Bool(matches.get_flag(&id)));
            continue;
        }
        let Some(raw) = matches.get_raw(&id) else {
            continue;
        };
        let values: Vec<Value> = raw
            .map(|v| {
                let s = v.to_string_lossy().into_owned();
                match s.parse::<u64>() {
                    Ok(n) => Value::from(n),
                    Err(_) => Value::String(s),
                }
            })
            .collect();
        if repeat {
            out.insert(long, Value::Array(values));
        } else if let Some(v) = values.into_iter().next() {
            out.insert(long, v);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("kvmrun-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn toml_values_apply_and_the_command_line_wins() {
        let p = write(
            "a.toml",
            "cpus = 2\nmemory = \"512M\"\ntimeout = \"30s\"\nallow-pvm = true\nnet = [\"tap=t0\"]\n",
        );
        let e = effective(&os(&[
            "--config",
            p.to_str().unwrap(),
            "--cpus",
            "4",
            "--",
            "true",
        ]))
        .unwrap();
        assert_eq!(e.args.cpus, 4);
        assert_eq!(e.args.memory.0, 512 << 20);
        assert!(e.args.allow_pvm);
        assert_eq!(e.args.net.len(), 1);
        assert_eq!(e.args.command, vec!["true".to_string()]);
        assert_eq!(e.config["cpus"], 4);
        assert_eq!(e.config["timeout"], "30s");
    }

    #[test]
    fn unknown_keys_and_bad_values_name_key_and_line() {
        let p = write("b.json", "{\n  \"cpus\": 2,\n  \"cpu\": 3\n}\n");
        let e = effective(&os(&["--config", p.to_str().unwrap()]))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("line 3") && e.contains("'cpu'"), "{e}");
        let p = write("c.toml", "memory = \"256M\"\n\ncpus = 0\n");
        let e = effective(&os(&["--config", p.to_str().unwrap()]))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("line 3") && e.contains("'cpus'"), "{e}");
        let p = write("d.json", "{\n  \"allow-pvm\": \"yes\"\n}");
        let e = effective(&os(&["--config", p.to_str().unwrap()]))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("line 2") && e.contains("true or false"), "{e}");
        let p = write("e.json", "{\n  \"cpus\": 2,,\n}");
        let e = effective(&os(&["--config", p.to_str().unwrap()]))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("line 2"), "{e}");
    }

    #[test]
    fn printed_config_reads_back_to_itself() {
        let p = write("f.toml", "cpus = 3\ndisk = [\"path=/x,readonly=on\"]\n");
        let first = effective(&os(&["--config", p.to_str().unwrap(), "--timeout", "2m"])).unwrap();
        let printed = serde_json::to_string_pretty(&first.config).unwrap();
        let q = write("g.json", &printed);
        let second = effective(&os(&["--config", q.to_str().unwrap()])).unwrap();
        assert_eq!(first.config, second.config);
        assert_eq!(second.args.cpus, 3);
    }
}
