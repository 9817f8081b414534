//! The CQL lexer: text to tokens, each with its byte offset so errors can
//! point at a line and column.
//!
//! Unquoted identifiers and keywords are one token kind (`Ident`): CQL's
//! keywords are mostly non-reserved, so the parser decides from context.
//! Unquoted identifiers are lowercased here, quoted ones (`"Name"`) keep their
//! case, as Cassandra does. A minus sign is always its own token; the parser
//! folds it into a following number literal.

use crate::ParseError;

/// The longest statement the lexer accepts, in bytes. Statements arrive in
/// frames already bounded by the endpoint; this bound keeps the parser's own
/// promise independent of its caller.
pub const STATEMENT_BYTES_MAX: usize = 16 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq)]
pub enum TokenKind {
    /// An identifier or keyword; `quoted` when it was written `"like this"`.
    Ident {
        text: String,
        quoted: bool,
    },
    String(String),
    Integer(String),
    Float(String),
    /// `0x...`, decoded.
    Hex(Vec<u8>),
    Uuid(String),
    Duration(String),
    /// `?`
    Question,
    /// `:name`
    Named(String),
    Punct(&'static str),
    End,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Token {
    pub kind: TokenKind,
    /// Byte offset of the token's first character in the statement.
    pub offset: usize,
}

const PUNCTUATION: [&str; 19] = [
    "<=", ">=", "!=", "(", ")", ",", ";", ".", "*", "=", "<", ">", "+", "-", "[", "]", "{", "}",
    ":",
];

const DURATION_UNITS: [&str; 11] = ["mo", "ms", "us", "µs", "ns", "y", "w", "d", "h", "m", "s"];

/// Splits `text` into tokens, ending with [`TokenKind::End`].
///
/// # Errors
/// A [`ParseError`] at the offending character for an unterminated string
/// or comment, an invalid hex literal, or a character CQL does not use.
pub fn tokenize(text: &str) -> Result<Vec<Token>, ParseError> {
    if text.len() > STATEMENT_BYTES_MAX {
        return Err(ParseError::at(
            text,
            0,
            format!(
                "statement of {} bytes is over STATEMENT_BYTES_MAX ({STATEMENT_BYTES_MAX})",
                text.len()
            ),
        ));
    }
    let mut lexer = Lexer {
        text,
        position: 0,
        tokens: Vec::new(),
    };
    lexer.run()?;
    Ok(lexer.tokens)
}

struct Lexer<'a> {
    text: &'a str,
    position: usize,
    tokens: Vec<Token>,
}

impl Lexer<'_> {
    fn rest(&self) -> &str {
        &self.text[self.position..]
    }

    fn error(&self, offset: usize, message: impl Into<String>) -> ParseError {
        ParseError::at(self.text, offset, message.into())
    }

    fn push(&mut self, kind: TokenKind, offset: usize) {
        self.tokens.push(Token { kind, offset });
    }

    fn run(&mut self) -> Result<(), ParseError> {
        loop {
            self.skip_whitespace_and_comments()?;
            let start = self.position;
            let Some(first) = self.rest().chars().next() else {
                self.push(TokenKind::End, start);
                return Ok(());
            };
            if first == '\'' {
                let value = self.quoted('\'')?;
                self.push(TokenKind::String(value), start);
            } else if first == '"' {
                let value = self.quoted('"')?;
                if value.is_empty() {
                    return Err(self.error(start, "a quoted identifier must not be empty"));
                }
                self.push(
                    TokenKind::Ident {
                        text: value,
                        quoted: true,
                    },
                    start,
                );
            } else if self.rest().starts_with("$$") {
                let body_start = start + 2;
                let Some(length) = self.text[body_start..].find("$$") else {
                    return Err(self.error(start, "unterminated $$ string"));
                };
                let value = self.text[body_start..body_start + length].to_owned();
                self.position = body_start + length + 2;
                self.push(TokenKind::String(value), start);
            } else if let Some(uuid) = self.uuid() {
                self.position += uuid.len();
                self.push(TokenKind::Uuid(uuid), start);
            } else if self.rest().len() > 1
                && (self.rest().starts_with("0x") || self.rest().starts_with("0X"))
            {
                self.hex(start)?;
            } else if first.is_ascii_digit()
                || (first == '.' && self.rest()[1..].starts_with(|c: char| c.is_ascii_digit()))
            {
                self.number(start);
            } else if first.is_alphabetic() || first == '_' {
                let length = self
                    .rest()
                    .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                    .unwrap_or(self.rest().len());
                let word = &self.rest()[..length];
                let kind = TokenKind::Ident {
                    text: word.to_lowercase(),
                    quoted: false,
                };
                self.position += length;
                self.push(kind, start);
            } else if first == '?' {
                self.position += 1;
                self.push(TokenKind::Question, start);
            } else if first == ':'
                && self.rest()[1..].starts_with(|c: char| c.is_alphabetic() || c == '_' || c == '"')
            {
                self.position += 1;
                let name = if self.rest().starts_with('"') {
                    self.quoted('"')?
                } else {
                    let length = self
                        .rest()
                        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                        .unwrap_or(self.rest().len());
                    let name = self.rest()[..length].to_lowercase();
                    self.position += length;
                    name
                };
                self.push(TokenKind::Named(name), start);
            } else if let Some(punct) = PUNCTUATION.iter().find(|p| self.rest().starts_with(**p)) {
                self.position += punct.len();
                self.push(TokenKind::Punct(punct), start);
            } else {
                return Err(self.error(start, format!("unexpected character `{first}`")));
            }
        }
    }

    fn skip_whitespace_and_comments(&mut self) -> Result<(), ParseError> {
        loop {
            let text = self.text;
            let rest = &text[self.position..];
            let trimmed = rest.trim_start();
            self.position += rest.len() - trimmed.len();
            if trimmed.starts_with("--") || trimmed.starts_with("//") {
                let length = trimmed.find('\n').unwrap_or(trimmed.len());
                self.position += length;
            } else if let Some(comment) = trimmed.strip_prefix("/*") {
                let Some(end) = comment.find("*/") else {
                    return Err(self.error(self.position, "unterminated /* comment"));
                };
                self.position += end + 4;
            } else {
                return Ok(());
            }
        }
    }

    /// Reads a string quoted with `quote`, where a doubled quote stands for
    /// one.
    fn quoted(&mut self, quote: char) -> Result<String, ParseError> {
        let start = self.position;
        self.position += 1;
        let mut value = String::new();
        loop {
            let Some(c) = self.rest().chars().next() else {
                let what = if quote == '\'' {
                    "string"
                } else {
                    "quoted identifier"
                };
                return Err(self.error(start, format!("unterminated {what}")));
            };
            self.position += c.len_utf8();
            if c == quote {
                if self.rest().starts_with(quote) {
                    self.position += 1;
                    value.push(quote);
                } else {
                    return Ok(value);
                }
            } else {
                value.push(c);
            }
        }
    }

    fn uuid(&self) -> Option<String> {
        let rest = self.rest().as_bytes();
        if rest.len() < 36 {
            return None;
        }
        for (idx, &byte) in rest[..36].iter().enumerate() {
            let ok = match idx {
                8 | 13 | 18 | 23 => byte == b'-',
                _ => byte.is_ascii_hexdigit(),
            };
            if !ok {
                return None;
            }
        }
        if rest
            .get(36)
            .is_some_and(|&b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return None;
        }
        Some(self.rest()[..36].to_lowercase())
    }

    fn hex(&mut self, start: usize) -> Result<(), ParseError> {
        let digits_length = self.rest()[2..]
            .find(|c: char| !c.is_ascii_alphanumeric())
            .unwrap_or(self.rest().len() - 2);
        let digits = &self.rest()[2..2 + digits_length];
        if !digits.len().is_multiple_of(2) || !digits.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(self.error(
                start,
                format!("invalid blob literal `0x{digits}`: expected an even number of hex digits"),
            ));
        }
        let bytes = (0..digits.len())
            .step_by(2)
            .map(|idx| u8::from_str_radix(&digits[idx..idx + 2], 16))
            .collect::<Result<Vec<u8>, _>>()
            .map_err(|_| self.error(start, "invalid hex digits"))?;
        self.position += 2 + digits_length;
        self.push(TokenKind::Hex(bytes), start);
        Ok(())
    }

    /// An integer, a float, or a duration such as `1h30m`.
    fn number(&mut self, start: usize) {
        let digits = |s: &str| s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let rest = self.rest();
        let mut length = digits(rest);
        // Durations: one or more `<digits><unit>` groups.
        if let Some(duration_length) = duration_length(rest) {
            let text = rest[..duration_length].to_owned();
            self.position += duration_length;
            self.push(TokenKind::Duration(text), start);
            return;
        }
        let mut is_float = false;
        if rest[length..].starts_with('.')
            && rest[length + 1..].starts_with(|c: char| c.is_ascii_digit())
        {
            is_float = true;
            length += 1 + digits(&rest[length + 1..]);
        }
        let after = &rest[length..];
        if after.starts_with(['e', 'E']) {
            let sign = usize::from(after[1..].starts_with(['+', '-']));
            let exponent_digits = digits(&after[1 + sign..]);
            if exponent_digits > 0 {
                is_float = true;
                length += 1 + sign + exponent_digits;
            }
        }
        let text = rest[..length].to_owned();
        self.position += length;
        let kind = if is_float {
            TokenKind::Float(text)
        } else {
            TokenKind::Integer(text)
        };
        self.push(kind, start);
    }
}

fn duration_length(text: &str) -> Option<usize> {
    let mut position = 0;
    let mut groups = 0;
    loop {
        let rest = &text[position..];
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            break;
        }
        let head: String = rest[digits..]
            .chars()
            .take(2)
            .collect::<String>()
            .to_lowercase();
        let Some(unit) = DURATION_UNITS.iter().find(|unit| head.starts_with(**unit)) else {
            break;
        };
        let after = &rest[digits + unit.len()..];
        // A unit ends the word or is followed by the next group's digits:
        // `10mb` is not a duration.
        if after.starts_with(|c: char| c.is_alphabetic() || c == '_') {
            break;
        }
        position += digits + unit.len();
        groups += 1;
    }
    (groups > 0).then_some(position)
}
