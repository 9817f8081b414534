//! `concord-cql-parser`: CQL statement text to an AST.
//!
//! **Owns**: the lexer ([`lexer`]), the recursive-descent parser
//! ([`parse`]) and the AST ([`ast`]) of the statements Concord serves: USE;
//! CREATE / ALTER / DROP of keyspaces, tables and types; TRUNCATE; INSERT
//! (also JSON), UPDATE and DELETE with their `IF` conditions and `USING`;
//! SELECT with its whole clause set; BATCH; Cassandra 5's `BEGIN TRANSACTION
//! ... COMMIT TRANSACTION` blocks; server-side DESCRIBE; bind markers `?` and
//! `:name`.
//!
//! **Must never**: depend on another Concord crate (the client SDK, fuzzers
//! and `jepsen` parse CQL without linking the engine), type a literal (the
//! endpoint types literals against the schema), or recurse without the
//! [`parser::PARSER_DEPTH_MAX`] bound: hostile input gets an error, never a
//! stack overflow or a panic.
//!
//! Errors carry the line and column of the offending token, formatted as
//! Cassandra does (`line 1:7 ...`), so cqlsh users see where to look.
//!
//! Key types: [`ast::Statement`], [`ast::Parsed`], [`ParseError`].

pub mod ast;
pub mod lexer;
pub mod parser;

pub use ast::{Parsed, Statement};
pub use parser::parse;

/// A statement that does not parse, with where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}:{column} {message}")]
pub struct ParseError {
    /// 1-based line of the offending token.
    pub line: usize,
    /// 1-based column (in characters) of the offending token.
    pub column: usize,
    pub message: String,
}

impl ParseError {
    /// An error at byte `offset` of `text`.
    pub fn at(text: &str, offset: usize, message: String) -> ParseError {
        let offset = offset.min(text.len());
        let before = text.get(..offset).unwrap_or(text);
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |idx| idx + 1);
        let column = before[line_start..].chars().count() + 1;
        ParseError {
            line,
            column,
            message,
        }
    }
}

#[cfg(test)]
mod tests;
