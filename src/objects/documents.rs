//! Splits a YAML stream into its documents, keeping each one's first line number so errors the
//! parser reports inside a document can be given as lines of the whole file.

/// One document of a YAML stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Document<'a> {
    /// The document's text, including its leading `---` line if it has one.
    pub text: &'a str,
    /// The 1-based line of the file where `text` starts.
    pub first_line: u64,
}

impl Document<'_> {
    /// The file line of a line number the parser reported inside this document (1-based).
    pub fn file_line(&self, line_in_document: u64) -> u64 {
        self.first_line + line_in_document.saturating_sub(1)
    }

    /// The file line of the document's first line of content, to name where an object starts.
    pub fn content_line(&self) -> u64 {
        let offset = self
            .text
            .lines()
            .position(|l| !is_blank_or_comment(l) && !is_separator(l) && !is_directive(l))
            .unwrap_or(0);
        self.first_line + offset as u64
    }

    /// True when the document has nothing a parser would read (blank lines, comments, directives).
    pub fn is_empty(&self) -> bool {
        self.text
            .lines()
            .all(|l| is_blank_or_comment(l) || is_directive(l) || l.trim_end() == "---")
    }
}

/// Splits `text` at `---` lines. A separator line starts the document that follows it, so a
/// document that opens on the separator line (`--- {a: 1}`) still parses.
pub fn split(text: &str) -> Vec<Document<'_>> {
    let mut docs = Vec::new();
    let mut start = 0;
    let mut start_line = 1;
    let mut offset = 0;
    for (index, line) in text.split_inclusive('\n').enumerate() {
        let line_no = index as u64 + 1;
        if is_separator(line) && offset > start {
            docs.push(Document {
                text: &text[start..offset],
                first_line: start_line,
            });
            start = offset;
            start_line = line_no;
        }
        offset += line.len();
    }
    if start < text.len() {
        docs.push(Document {
            text: &text[start..],
            first_line: start_line,
        });
    }
    docs
}

/// `---` at the start of a line, alone or followed by whitespace, begins a document in YAML.
fn is_separator(line: &str) -> bool {
    line.strip_prefix("---")
        .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t', '\r', '\n']))
}

fn is_directive(line: &str) -> bool {
    line.starts_with('%')
}

fn is_blank_or_comment(line: &str) -> bool {
    let t = line.trim_start();
    t.is_empty() || t.starts_with('#')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_and_numbers_lines() {
        let text = "# header\na: 1\n---\nb: 2\n\n--- \n# c\nc: 3\n";
        let docs = split(text);
        assert_eq!(docs.len(), 3);
        assert_eq!((docs[0].first_line, docs[0].content_line()), (1, 2));
        assert_eq!((docs[1].first_line, docs[1].content_line()), (3, 4));
        assert_eq!((docs[2].first_line, docs[2].content_line()), (6, 8));
        assert_eq!(docs[2].file_line(3), 8);
        assert_eq!(docs.iter().map(|d| d.text).collect::<String>(), text);
    }

    #[test]
    fn leading_separator_and_trailing_empty_documents() {
        let docs = split("---\na: 1\n---\n");
        assert_eq!(docs.len(), 2);
        assert!(!docs[0].is_empty());
        assert!(docs[1].is_empty());
    }

    #[test]
    fn dashes_inside_values_do_not_split() {
        let docs = split("a: |\n  ---\n  x\nb: ----\n----\n");
        assert_eq!(docs.len(), 1);
    }

    #[test]
    fn directives_alone_are_empty() {
        let docs = split("%YAML 1.2\n---\na: 1\n");
        assert_eq!(docs.len(), 2);
        assert!(docs[0].is_empty());
        assert_eq!(docs[1].content_line(), 3);
    }
}
