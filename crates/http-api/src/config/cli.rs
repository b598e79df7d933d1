//! The command line of the service, made from the setting declarations ([`SETTINGS`]): a
//! flag for every setting that has one, `--help` with each default, and the [`Layered`]
//! source that puts the flags over the environment.

use std::collections::{BTreeMap, BTreeSet};

use super::{ConfigError, RUST_LOG, SETTINGS, Setting, Source};

/// The command line: a flag for every setting that has one, each also read from its
/// variable by clap. Clap fills no default value: a flag that is absent (and whose variable
/// is unset) stays unset, so [`Config::from_source`](super::Config::from_source) applies the default and `--help` only
/// shows it.
#[derive(Debug, Clone, Default)]
pub struct Cli {
    /// The value of each flag that was given (typed, or from its variable), by variable.
    values: BTreeMap<&'static str, String>,
    /// The variables whose value was typed as a flag, so that a problem is reported under
    /// the name the user typed.
    from_flags: BTreeSet<&'static str>,
}

impl Cli {
    /// The clap command made from [`SETTINGS`]: `--help` shows each flag's default and
    /// variable, and lists the variables that have no flag.
    pub fn command() -> clap::Command {
        // The variables without a flag, by name (the flags keep the declaration order).
        let mut env_only: Vec<&Setting> = SETTINGS.iter().filter(|s| s.flag.is_none()).collect();
        env_only.sort_by_key(|s| s.env);
        let secrets: Vec<&str> = env_only
            .iter()
            .filter(|s| s.secret)
            .map(|s| s.env)
            .collect();
        let mut after = String::from(
            "Every flag can also be set by the environment variable shown with it; a flag wins over its\n\
             variable. A flag left out means \"not set\": the default shown applies.\n\n\
             Read from the environment only (secrets get no flag, a flag would show up in `ps`):",
        );
        for s in &env_only {
            after.push_str(&format!("\n  {:<16} {}", s.env, s.help_with_default()));
            if let Some(alias) = s.alias {
                after.push_str(&format!(
                    "\n{:19}({alias} is read when {} is unset)",
                    "", s.env
                ));
            }
        }
        let flags = SETTINGS.iter().filter_map(|s| {
            let flag = s.flag?;
            Some(
                clap::Arg::new(s.env)
                    .long(flag)
                    .env(s.env)
                    .value_name(s.env)
                    .action(clap::ArgAction::Set)
                    // `--lease-ttl-secs -1` is a bad value (reported with every other bad
                    // setting), not an unknown flag `-1`.
                    .allow_negative_numbers(true)
                    .help(s.help_with_default()),
            )
        });
        clap::Command::new("http-api")
            .version(env!("CARGO_PKG_VERSION"))
            .about("talkgate: a D-ID gateway with a priority concurrency limiter")
            .long_about(format!(
                "talkgate: a D-ID gateway with a priority concurrency limiter.\n\n\
                 Secrets are read from the environment only: {}. Logging is filtered by {}.",
                secrets.join(", "),
                RUST_LOG.env
            ))
            .after_long_help(after)
            .args(flags)
    }

    /// Parses the process's arguments (exiting with clap's message and code 2 on a usage
    /// error, or printing `--help`/`--version`) and remembers which values were typed as flags.
    pub fn parse_args() -> Cli {
        Self::parse_from_args(std::env::args_os()).unwrap_or_else(|e| e.exit())
    }

    /// [`parse_args`](Self::parse_args) over given arguments, for tests.
    pub fn parse_from_args<I, T>(args: I) -> Result<Cli, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        use clap::parser::ValueSource;
        let matches = Cli::command().try_get_matches_from(args)?;
        let mut cli = Cli::default();
        for s in SETTINGS.iter().filter(|s| s.flag.is_some()) {
            if let Some(value) = matches.get_one::<String>(s.env) {
                cli.values.insert(s.env, value.clone());
            }
            if matches.value_source(s.env) == Some(ValueSource::CommandLine) {
                cli.from_flags.insert(s.env);
            }
        }
        Ok(cli)
    }

    /// The value given for variable `var`'s flag (typed, or from the variable), if any.
    pub fn value(&self, var: &str) -> Option<&str> {
        self.values.get(var).map(String::as_str)
    }

    /// How a problem's variable is shown to the user: `--flag` when its value came from the
    /// command line, else the variable's name.
    pub fn source_name(&self, var: &str) -> String {
        SETTINGS
            .iter()
            .filter(|s| self.from_flags.contains(var) && s.env == var)
            .find_map(|s| s.flag)
            .map_or_else(|| var.to_owned(), |flag| format!("--{flag}"))
    }

    /// `err` in one line, each problem under the name the user gave it (see
    /// [`source_name`](Self::source_name)).
    pub fn describe(&self, err: &ConfigError) -> String {
        let problems: Vec<String> = err
            .problems
            .iter()
            .map(|p| format!("{}: {}", self.source_name(p.var), p.message))
            .collect();
        format!("invalid configuration: {}", problems.join("; "))
    }

    /// A [`Source`] answering from the flags first, then from `fallback` (the environment).
    pub fn layered<'a, S: Source + ?Sized>(&'a self, fallback: &'a S) -> Layered<'a, S> {
        Layered {
            cli: self,
            fallback,
        }
    }
}

/// The flags (which clap already filled from their variables) over a fallback source for the
/// variables that have no flag.
#[derive(Debug)]
pub struct Layered<'a, S: Source + ?Sized> {
    cli: &'a Cli,
    fallback: &'a S,
}

impl<S: Source + ?Sized> Source for Layered<'_, S> {
    fn get(&self, name: &str) -> Option<String> {
        self.cli
            .value(name)
            .map(str::to_owned)
            .or_else(|| self.fallback.get(name))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::config::Config;

    #[test]
    fn flags_win_over_the_environment() {
        let cli = Cli::parse_from_args(["http-api", "--bind-addr", "127.0.0.1:0"]).unwrap();
        let env: HashMap<&str, &str> =
            HashMap::from([("BIND_ADDR", "127.0.0.1:1"), ("D_ID_API_KEY", "k:v")]);
        let c = Config::from_source(&cli.layered(&env)).unwrap();
        assert_eq!(c.bind_addr.port(), 0);
        assert!(c.did_api_key.is_some());
        Cli::command().debug_assert();
    }

    #[test]
    fn an_absent_flag_stays_unset_and_problems_name_what_the_user_typed() {
        let cli = Cli::parse_from_args(["http-api", "--did-base-url", "ftp://x"]).unwrap();
        assert!(
            cli.value("BIND_ADDR").is_none(),
            "clap must not fill defaults"
        );
        let env: HashMap<&str, &str> = HashMap::from([("MAX_CONCURRENT_REQUESTS", "0")]);
        let err = Config::from_source(&cli.layered(&env)).unwrap_err();
        let text = cli.describe(&err);
        assert!(text.contains("--did-base-url: "), "{text}");
        assert!(text.contains("MAX_CONCURRENT_REQUESTS: "), "{text}");
    }

    #[test]
    fn each_flag_shows_its_own_default_and_variable_in_help() {
        let help = Cli::command().render_long_help().to_string();
        for s in SETTINGS {
            let Some(flag) = s.flag else {
                assert!(help.contains(s.env), "--help lacks {}:\n{help}", s.env);
                continue;
            };
            let at = help
                .find(&format!("--{flag} "))
                .unwrap_or_else(|| panic!("--help lacks --{flag}:\n{help}"));
            let entry = &help[at..];
            let entry = &entry[..entry.find("\n\n").unwrap_or(entry.len())];
            assert!(entry.contains(&s.help_with_default()), "{entry}");
            assert!(entry.contains(&format!("[env: {}=", s.env)), "{entry}");
        }
    }
}
