//! The operator's librdkafka properties, gathered once from every place they may be given
//! and handed to every Kafka client the hub makes, so that no client (the admin client that
//! creates the hub's own topics included) connects with other settings than the rest.
//!
//! Values may hold any character: a properties file in Kafka's own format (as Kafka's tools
//! take with `--command-config`) passes passwords with commas, spaces or `=` through
//! unchanged, and can be mounted from a secret store. No error, log line or help text shows
//! the value of a setting: errors name the key and where it came from.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Properties that decide how a client reaches the brokers. The admin client takes them
/// from whichever side holds them, since it must reach the same brokers as the others.
const CONNECTION_PREFIXES: [&str; 4] = ["security.protocol", "sasl.", "ssl.", "ssl_"];

/// Keys whose values are secrets, matched on parts of the name.
const SECRET_PARTS: [&str; 5] = [
    "password",
    "secret",
    "jaas",
    "oauthbearer.config",
    "key.pem",
];

fn is_connection(key: &str) -> bool {
    CONNECTION_PREFIXES.iter().any(|p| key.starts_with(p))
}

fn is_secret(key: &str) -> bool {
    SECRET_PARTS.iter().any(|part| key.contains(part))
}

/// Which client a set of properties is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Producers: publishes, presence, signals.
    Producer,
    /// The live consumer, replays, history pages, the roster.
    Consumer,
    /// The admin client that creates the hub's own topics.
    Admin,
}

/// Where the operator's properties came from, by the names an operator sets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KafkaSettings {
    common: Vec<(String, String)>,
    producer: Vec<(String, String)>,
    consumer: Vec<(String, String)>,
}

/// The raw settings as given: the properties file, then the `KEY=VALUE` lists.
pub struct Sources<'a> {
    pub file: Option<&'a Path>,
    pub common: &'a [String],
    pub producer: &'a [String],
    pub consumer: &'a [String],
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SettingsError {
    #[error("WSKAFKA_KAFKA_CONFIG: cannot read {path}: {cause}")]
    Read { path: PathBuf, cause: String },
    #[error(
        "WSKAFKA_KAFKA_CONFIG: {path} is not in Kafka's properties format at line {line} (values are not shown)"
    )]
    Format { path: PathBuf, line: usize },
    #[error(
        "{variable}: an entry {place} has no `=` (values are not shown); a value holding a comma \
         belongs in a properties file (WSKAFKA_KAFKA_CONFIG)"
    )]
    NoEquals {
        variable: &'static str,
        place: String,
    },
    #[error("{variable}: an entry has no key before its `=`")]
    EmptyKey { variable: &'static str },
    #[error(
        "the {side} sets `{key}`, which needs security.protocol SASL_SSL or SASL_PLAINTEXT, \
         but its security.protocol is {protocol}"
    )]
    SaslWithoutSasl {
        side: &'static str,
        key: String,
        protocol: String,
    },
    #[error(
        "the producer connects with security.protocol {producer} and the consumer with \
         {consumer} to the same brokers: one of them cannot connect; give both the same \
         (in WSKAFKA_KAFKA_CONFIG or WSKAFKA_KAFKA, which both take)"
    )]
    SidesDisagree { producer: String, consumer: String },
}

impl KafkaSettings {
    pub fn load(sources: &Sources<'_>) -> Result<Self, SettingsError> {
        let mut common = match sources.file {
            Some(path) => read_file(path)?,
            None => Vec::new(),
        };
        common.extend(parse_list("WSKAFKA_KAFKA (-X)", sources.common)?);
        let settings = KafkaSettings {
            common,
            producer: parse_list("WSKAFKA_KAFKA_PRODUCER", sources.producer)?,
            consumer: parse_list("WSKAFKA_KAFKA_CONSUMER", sources.consumer)?,
        };
        settings.check()?;
        Ok(settings)
    }

    /// The properties for one side's clients, in the order they apply: shared ones first,
    /// the side's own last. The admin client takes the connection properties of the
    /// producer's side, or of the consumer's when only that side has them.
    pub fn for_side(&self, side: Side) -> Vec<(&str, &str)> {
        let own: Vec<&(String, String)> = match side {
            Side::Producer => self.producer.iter().collect(),
            Side::Consumer => self.consumer.iter().collect(),
            Side::Admin => {
                let has_connection = self.producer.iter().any(|(key, _)| is_connection(key));
                let side = if has_connection {
                    &self.producer
                } else {
                    &self.consumer
                };
                side.iter().filter(|(key, _)| is_connection(key)).collect()
            }
        };
        self.common
            .iter()
            .chain(own)
            .map(|(key, value)| (key.as_str(), value.as_str()))
            .collect()
    }

    /// `text` with the value of every secret setting masked: for messages that come from
    /// librdkafka, which may quote what it was given.
    pub fn redact(&self, text: &str) -> String {
        let mut text = text.to_string();
        for (key, value) in self.all() {
            if is_secret(key) && !value.is_empty() {
                text = text.replace(value, "***");
            }
        }
        text
    }

    fn all(&self) -> impl Iterator<Item = &(String, String)> {
        self.common
            .iter()
            .chain(&self.producer)
            .chain(&self.consumer)
    }

    /// Refuses combinations that cannot connect, naming keys, never values.
    fn check(&self) -> Result<(), SettingsError> {
        let effective =
            |side: Side| -> BTreeMap<&str, &str> { self.for_side(side).into_iter().collect() };
        let protocol = |settings: &BTreeMap<&str, &str>| {
            settings
                .get("security.protocol")
                .map_or("PLAINTEXT".to_string(), |p| p.to_ascii_uppercase())
        };
        let (producer, consumer) = (effective(Side::Producer), effective(Side::Consumer));
        for (name, settings) in [("producer", &producer), ("consumer", &consumer)] {
            let protocol = protocol(settings);
            if let Some(key) = settings.keys().find(|key| key.starts_with("sasl."))
                && !protocol.starts_with("SASL_")
            {
                return Err(SettingsError::SaslWithoutSasl {
                    side: name,
                    key: key.to_string(),
                    protocol,
                });
            }
        }
        if producer.get("bootstrap.servers") == consumer.get("bootstrap.servers")
            && protocol(&producer) != protocol(&consumer)
        {
            return Err(SettingsError::SidesDisagree {
                producer: protocol(&producer),
                consumer: protocol(&consumer),
            });
        }
        Ok(())
    }
}

fn read_file(path: &Path) -> Result<Vec<(String, String)>, SettingsError> {
    let file = std::fs::File::open(path).map_err(|e| SettingsError::Read {
        path: path.to_path_buf(),
        cause: e.to_string(),
    })?;
    let properties = java_properties::read(std::io::BufReader::new(file)).map_err(|e| {
        match e.line_number() {
            Some(line) => SettingsError::Format {
                path: path.to_path_buf(),
                line,
            },
            None => SettingsError::Read {
                path: path.to_path_buf(),
                cause: "not readable as text".into(),
            },
        }
    })?;
    // Sorted, so that clients are configured the same way on every start.
    Ok(properties
        .into_iter()
        .collect::<BTreeMap<_, _>>()
        .into_iter()
        .collect())
}

/// `KEY=VALUE` entries from a flag or a comma-separated variable; spaces around keys and
/// values are trimmed there, so values that need them belong in the properties file.
fn parse_list(
    variable: &'static str,
    entries: &[String],
) -> Result<Vec<(String, String)>, SettingsError> {
    let mut parsed: Vec<(String, String)> = Vec::new();
    for entry in entries {
        let Some((key, value)) = entry.split_once('=') else {
            // Most likely the rest of a value cut at a comma: say after which key.
            let place = match parsed.last() {
                Some((key, _)) => format!("after `{key}`"),
                None => "at the start".into(),
            };
            return Err(SettingsError::NoEquals { variable, place });
        };
        let key = key.trim();
        if key.is_empty() {
            return Err(SettingsError::EmptyKey { variable });
        }
        parsed.push((key.to_string(), value.trim().to_string()));
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(entries: &[&str]) -> Vec<String> {
        entries.iter().map(|e| e.to_string()).collect()
    }

    fn load(
        common: &[&str],
        producer: &[&str],
        consumer: &[&str],
    ) -> Result<KafkaSettings, SettingsError> {
        let (common, producer, consumer) = (list(common), list(producer), list(consumer));
        KafkaSettings::load(&Sources {
            file: None,
            common: &common,
            producer: &producer,
            consumer: &consumer,
        })
    }

    #[test]
    fn a_value_cut_at_a_comma_is_refused_naming_the_key_before_it_never_the_value() {
        // What clap hands over for `sasl.password=s3cr3t,part2`.
        let error = load(&["sasl.password=s3cr3t", "part2"], &[], &[]).unwrap_err();
        let text = error.to_string();
        assert!(text.contains("after `sasl.password`"), "{text}");
        assert!(
            !text.contains("s3cr3t") && !text.contains("part2"),
            "{text}"
        );
        assert_eq!(
            load(&["=x"], &[], &[]).unwrap_err(),
            SettingsError::EmptyKey {
                variable: "WSKAFKA_KAFKA (-X)"
            }
        );
    }

    #[test]
    fn a_properties_file_keeps_commas_spaces_and_equals_signs() {
        let dir = std::env::temp_dir().join(format!("wskafka-settings-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("client.properties");
        std::fs::write(
            &path,
            "# managed Kafka\nsecurity.protocol=SASL_SSL\nsasl.mechanism = SCRAM-SHA-512\n\
             sasl.username=hub\nsasl.password=pa,ss w=rd \\\n  more\n",
        )
        .unwrap();
        let settings = KafkaSettings::load(&Sources {
            file: Some(&path),
            common: &list(&["linger.ms=5"]),
            producer: &[],
            consumer: &[],
        })
        .unwrap();
        let producer: BTreeMap<&str, &str> =
            settings.for_side(Side::Producer).into_iter().collect();
        assert_eq!(producer["sasl.password"], "pa,ss w=rd more");
        assert_eq!(producer["sasl.mechanism"], "SCRAM-SHA-512");
        assert_eq!(producer["linger.ms"], "5");
        assert_eq!(
            settings.redact("failed with pa,ss w=rd more here"),
            "failed with *** here"
        );

        std::fs::write(&path, "sasl.password=\\uZZZZ\n").unwrap();
        let error = KafkaSettings::load(&Sources {
            file: Some(&path),
            common: &[],
            producer: &[],
            consumer: &[],
        })
        .unwrap_err();
        assert!(
            matches!(error, SettingsError::Format { line: 1, .. }),
            "{error}"
        );
        assert!(!error.to_string().contains("ZZZZ"));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn the_admin_client_connects_as_the_side_that_says_how() {
        let sasl = [
            "security.protocol=SASL_SSL",
            "sasl.mechanism=SCRAM-SHA-512",
            "sasl.username=producer",
            "linger.ms=5",
        ];
        let consumer_sasl = [
            "security.protocol=SASL_SSL",
            "sasl.mechanism=SCRAM-SHA-512",
            "sasl.username=consumer",
            "fetch.wait.max.ms=10",
        ];
        let settings = load(&[], &sasl, &consumer_sasl).unwrap();
        let admin: Vec<(&str, &str)> = settings.for_side(Side::Admin);
        assert_eq!(
            admin,
            [
                ("security.protocol", "SASL_SSL"),
                ("sasl.mechanism", "SCRAM-SHA-512"),
                ("sasl.username", "producer")
            ]
        );
        // The consumer's side alone, against the same brokers: the producer would speak
        // plaintext to a TLS listener.
        assert_eq!(
            load(&["client.rack=a"], &[], &consumer_sasl).unwrap_err(),
            SettingsError::SidesDisagree {
                producer: "PLAINTEXT".into(),
                consumer: "SASL_SSL".into()
            }
        );
    }

    #[test]
    fn sasl_settings_without_a_sasl_protocol_are_refused() {
        assert_eq!(
            load(&["security.protocol=SSL", "sasl.username=hub"], &[], &[]).unwrap_err(),
            SettingsError::SaslWithoutSasl {
                side: "producer",
                key: "sasl.username".into(),
                protocol: "SSL".into()
            }
        );
        assert!(
            load(
                &["security.protocol=sasl_ssl", "sasl.username=hub"],
                &[],
                &[]
            )
            .is_ok()
        );
    }
}
