//! `iptables-save` text read back into tables, chains and rules, each rule split into its
//! matches and its target, so the tracer can evaluate what a kernel would.
//!
//! It reads what any node's `iptables-save` prints (kube-proxy's, other components' rules,
//! `-c` counters), not only our own render: unknown matches and targets are kept by name, and
//! the walk says it could not model them rather than failing.

use std::collections::BTreeMap;

use thiserror::Error;

/// A malformed line of `iptables-save` text.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("line {line}: {message}")]
pub struct SaveParseError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong with it.
    pub message: String,
}

/// Every table of one `iptables-save` text.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SavedRuleset {
    /// Tables by name (`filter`, `nat`, `mangle`, `raw`, …).
    pub tables: BTreeMap<String, SavedTable>,
}

/// One table: its chains by name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SavedTable {
    /// Chains by name, built-in ones included.
    pub chains: BTreeMap<String, SavedChain>,
}

/// One chain: its policy (built-in chains only) and rules in order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SavedChain {
    /// `ACCEPT`/`DROP` for a built-in chain, `None` for a user chain.
    pub policy: Option<String>,
    /// The rules, in order.
    pub rules: Vec<Rule>,
}

/// One parsed rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// The rule as `iptables-save` printed it (`-A CHAIN …`, counters dropped).
    pub text: String,
    /// What must hold for the rule to match, in order.
    pub matches: Vec<Match>,
    /// What happens when it does (None: a rule without a target, which only counts).
    pub target: Option<Target>,
}

/// One condition of a rule: a built-in option (`-s`, `-p`, …) or a match module's options.
#[derive(Debug, Clone, PartialEq)]
pub enum Match {
    /// `[!] -s CIDR`.
    Source {
        /// Whether a `!` came before it.
        negated: bool,
        /// The source network, as written.
        net: String,
    },
    /// `[!] -d CIDR`.
    Destination {
        /// Whether a `!` came before it.
        negated: bool,
        /// The destination network, as written.
        net: String,
    },
    /// `[!] -p PROTO`.
    Protocol {
        /// Whether a `!` came before it.
        negated: bool,
        /// The protocol name.
        proto: String,
    },
    /// `[!] -i NAME` (a trailing `+` is a prefix).
    InInterface {
        /// Whether a `!` came before it.
        negated: bool,
        /// The interface name.
        name: String,
    },
    /// `[!] -o NAME`.
    OutInterface {
        /// Whether a `!` came before it.
        negated: bool,
        /// The interface name.
        name: String,
    },
    /// `-m NAME` with its options.
    Module {
        /// The module's name.
        name: String,
        /// Its options, in order.
        options: Vec<ModuleOption>,
    },
}

/// One option of a match module or target: `[!] --name value…`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleOption {
    /// Whether a `!` came before it.
    pub negated: bool,
    /// The option name without dashes (`dport`, `match-set`).
    pub name: String,
    /// Its values (`--match-set NAME dst,dst` has two).
    pub values: Vec<String>,
}

/// What a rule does when it matches.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// `-j` (jump, returns) or `-g` (goto, does not).
    pub goto: bool,
    /// The target or chain name.
    pub name: String,
    /// The target's options (`--to-destination`, `--set-xmark`, …).
    pub options: Vec<ModuleOption>,
}

impl ModuleOption {
    /// The first value, or "".
    pub fn value(&self) -> &str {
        self.values.first().map_or("", String::as_str)
    }
}

impl Target {
    /// The first value of option `name`, if given.
    pub fn option(&self, name: &str) -> Option<&str> {
        self.options
            .iter()
            .find(|o| o.name == name)
            .map(ModuleOption::value)
    }
}

/// One word of a rule line; quoted words are always values, never options.
struct Word {
    text: String,
    quoted: bool,
}

/// Splits a rule line as iptables-save quotes it: double quotes, backslash escapes inside.
fn words(line: &str) -> Result<Vec<Word>, String> {
    let mut out = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let Some(&first) = chars.peek() else {
            return Ok(out);
        };
        let mut text = String::new();
        let mut quoted = false;
        if first == '"' {
            quoted = true;
            chars.next();
            loop {
                match chars.next() {
                    None => return Err("unterminated quote".into()),
                    Some('"') => break,
                    Some('\\') => match chars.next() {
                        Some(c) => text.push(c),
                        None => return Err("unterminated quote".into()),
                    },
                    Some(c) => text.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                text.push(c);
                chars.next();
            }
        }
        out.push(Word { text, quoted });
    }
}

fn is_option(w: &Word) -> bool {
    !w.quoted && w.text.starts_with('-') && w.text.len() > 1
}

/// Reads the values that follow an option, up to the next option or `!`.
fn values(words: &[Word], i: &mut usize) -> Vec<String> {
    let mut vals = Vec::new();
    while *i < words.len() && !is_option(&words[*i]) && (words[*i].text != "!" || words[*i].quoted)
    {
        vals.push(words[*i].text.clone());
        *i += 1;
    }
    vals
}

/// Parses the words after `-A CHAIN` into matches and a target.
fn parse_rule(words: &[Word]) -> Result<(Vec<Match>, Option<Target>), String> {
    let mut matches = Vec::new();
    let mut target: Option<Target> = None;
    let mut i = 0;
    let mut negated = false;
    while i < words.len() {
        let w = &words[i];
        i += 1;
        if w.text == "!" && !w.quoted {
            negated = true;
            continue;
        }
        if !is_option(w) {
            return Err(format!("unexpected word {:?}", w.text));
        }
        let single = |i: &mut usize| -> Result<String, String> {
            let v = words
                .get(*i)
                .filter(|v| !is_option(v))
                .ok_or_else(|| format!("{} needs a value", w.text))?;
            *i += 1;
            Ok(v.text.clone())
        };
        match w.text.as_str() {
            "-s" | "--source" | "--src" => matches.push(Match::Source {
                negated,
                net: single(&mut i)?,
            }),
            "-d" | "--destination" | "--dst" => matches.push(Match::Destination {
                negated,
                net: single(&mut i)?,
            }),
            "-p" | "--protocol" => matches.push(Match::Protocol {
                negated,
                proto: single(&mut i)?,
            }),
            "-i" | "--in-interface" => matches.push(Match::InInterface {
                negated,
                name: single(&mut i)?,
            }),
            "-o" | "--out-interface" => matches.push(Match::OutInterface {
                negated,
                name: single(&mut i)?,
            }),
            "-m" | "--match" => {
                let name = single(&mut i)?;
                let options = module_options(words, &mut i)?;
                matches.push(Match::Module { name, options });
            }
            "-j" | "--jump" | "-g" | "--goto" => {
                let goto = w.text == "-g" || w.text == "--goto";
                let name = single(&mut i)?;
                let options = module_options(words, &mut i)?;
                if i < words.len() {
                    return Err(format!("unexpected {:?} after the target", words[i].text));
                }
                target = Some(Target {
                    goto,
                    name,
                    options,
                });
            }
            other => return Err(format!("unknown option {other:?}")),
        }
        negated = false;
    }
    Ok((matches, target))
}

/// Reads `[!] --opt values…` pairs until the next `-m`/`-j`/short option.
fn module_options(words: &[Word], i: &mut usize) -> Result<Vec<ModuleOption>, String> {
    let mut opts = Vec::new();
    loop {
        let mut j = *i;
        let negated = words.get(j).is_some_and(|w| w.text == "!" && !w.quoted);
        if negated {
            j += 1;
        }
        let Some(w) = words.get(j) else { break };
        if !is_option(w) || !w.text.starts_with("--") {
            break;
        }
        // Long spellings of the built-in options end the module's options.
        if matches!(
            w.text.as_str(),
            "--source"
                | "--src"
                | "--destination"
                | "--dst"
                | "--protocol"
                | "--in-interface"
                | "--out-interface"
                | "--match"
                | "--jump"
                | "--goto"
        ) {
            break;
        }
        j += 1;
        let vals = values(words, &mut j);
        opts.push(ModuleOption {
            negated,
            name: w.text.trim_start_matches('-').to_string(),
            values: vals,
        });
        *i = j;
    }
    Ok(opts)
}

impl SavedRuleset {
    /// Parses `iptables-save` (or `ip6tables-save`) text; `-c` counters are accepted and dropped.
    pub fn parse(text: &str) -> Result<SavedRuleset, SaveParseError> {
        let mut rs = SavedRuleset::default();
        let mut current: Option<String> = None;
        for (n, raw) in text.lines().enumerate() {
            let line = raw.trim();
            let err = |message: String| SaveParseError {
                line: n + 1,
                message,
            };
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some(name) = line.strip_prefix('*') {
                rs.tables.entry(name.to_string()).or_default();
                current = Some(name.to_string());
                continue;
            }
            if line == "COMMIT" {
                current = None;
                continue;
            }
            let table_name = current
                .clone()
                .ok_or_else(|| err("a rule or chain outside a table (*nat … COMMIT)".into()))?;
            let table = rs.tables.get_mut(&table_name).expect("entered above");
            if let Some(decl) = line.strip_prefix(':') {
                let mut parts = decl.split_whitespace();
                let name = parts
                    .next()
                    .ok_or_else(|| err("a chain line without a name".into()))?;
                let policy = parts.next().filter(|p| *p != "-").map(str::to_string);
                table.chains.entry(name.to_string()).or_default().policy = policy;
                continue;
            }
            // `iptables-save -c` puts `[packets:bytes]` before the rule.
            let line = match line.strip_prefix('[') {
                Some(rest) => rest
                    .split_once(']')
                    .map(|(_, r)| r.trim_start())
                    .ok_or_else(|| err("unterminated counters".into()))?,
                None => line,
            };
            let ws = words(line).map_err(err)?;
            if ws.len() < 2 || (ws[0].text != "-A" && ws[0].text != "--append") {
                return Err(err(format!("expected `-A CHAIN …`, got {line:?}")));
            }
            let chain = ws[1].text.clone();
            let (matches, target) = parse_rule(&ws[2..]).map_err(err)?;
            let entry = table.chains.get_mut(&chain).ok_or_else(|| {
                err(format!(
                    "chain {chain} has rules but was not declared in *{table_name}"
                ))
            })?;
            entry.rules.push(Rule {
                text: line.to_string(),
                matches,
                target,
            });
        }
        if let Some(t) = current {
            return Err(SaveParseError {
                line: text.lines().count(),
                message: format!("table *{t} has no COMMIT"),
            });
        }
        Ok(rs)
    }

    /// The chain `chain` of table `table`, if the text declared it.
    pub fn chain(&self, table: &str, chain: &str) -> Option<&SavedChain> {
        self.tables.get(table)?.chains.get(chain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kube_proxy_rules_with_quotes_negations_and_counters() {
        let text = "*nat\n:PREROUTING ACCEPT [0:0]\n:KUBE-SVC-X - [0:0]\n\
            [3:180] -A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SVC-X\n\
            -A KUBE-SVC-X ! -s 10.244.0.0/16 -d 10.96.0.10/32 -p udp -m comment --comment \"a \\\"b\\\" -> c\" -m udp --dport 53 -j DNAT --to-destination 10.244.1.5:53\n\
            -A KUBE-SVC-X -m mark ! --mark 0x4000/0x4000 -j RETURN\n\
            -A KUBE-SVC-X -m set --match-set KUBE-LOOP-BACK dst,dst,src -j MASQUERADE --random-fully\n\
            COMMIT\n";
        let rs = SavedRuleset::parse(text).unwrap();
        let chain = rs.chain("nat", "PREROUTING").unwrap();
        assert_eq!(chain.policy.as_deref(), Some("ACCEPT"));
        assert!(chain.rules[0].text.starts_with("-A PREROUTING -m comment"));
        let svc = rs.chain("nat", "KUBE-SVC-X").unwrap();
        assert_eq!(svc.policy, None);
        let r = &svc.rules[0];
        assert_eq!(
            r.matches[0],
            Match::Source {
                negated: true,
                net: "10.244.0.0/16".into()
            }
        );
        assert_eq!(
            r.matches[3],
            Match::Module {
                name: "comment".into(),
                options: vec![ModuleOption {
                    negated: false,
                    name: "comment".into(),
                    values: vec!["a \"b\" -> c".into()]
                }]
            }
        );
        let t = r.target.as_ref().unwrap();
        assert_eq!(
            (t.name.as_str(), t.option("to-destination")),
            ("DNAT", Some("10.244.1.5:53"))
        );
        let Match::Module { options, .. } = &svc.rules[1].matches[0] else {
            panic!("mark module")
        };
        assert!(options[0].negated);
        let Match::Module { options, .. } = &svc.rules[2].matches[0] else {
            panic!("set module")
        };
        assert_eq!(options[0].values, ["KUBE-LOOP-BACK", "dst,dst,src"]);
        assert_eq!(
            svc.rules[2].target.as_ref().unwrap().options[0].name,
            "random-fully"
        );
    }

    #[test]
    fn malformed_text_is_an_error_with_its_line() {
        for (text, line) in [
            ("-A X -j ACCEPT\n", 1),
            ("*nat\n:X - [0:0]\n-A Y -j ACCEPT\nCOMMIT\n", 3),
            (
                "*nat\n:X - [0:0]\n-A X -m comment --comment \"open\nCOMMIT\n",
                3,
            ),
            ("*nat\n:X - [0:0]\n-A X -j\nCOMMIT\n", 3),
            ("*nat\n:X - [0:0]\n", 2),
            ("*nat\n:X - [0:0]\n-A X bogus\nCOMMIT\n", 3),
        ] {
            let e = SavedRuleset::parse(text).unwrap_err();
            assert_eq!(e.line, line, "{text:?}: {e}");
        }
    }
}
