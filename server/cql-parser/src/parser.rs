//! The recursive-descent parser: one function per grammar rule, each named
//! after the rule. Keywords are matched case-insensitively on unquoted
//! identifiers; a quoted identifier is never a keyword.

use crate::ParseError;
use crate::ast::*;
use crate::lexer::{Token, TokenKind, tokenize};

/// The deepest nesting of collection literals, types, tuples and function
/// calls accepted; deeper input is an error rather than a risk to the stack.
pub const PARSER_DEPTH_MAX: usize = 64;

/// Words that cannot be used as unquoted names (a subset of Cassandra's
/// reserved keywords: the ones whose misuse would make a statement
/// ambiguous here).
const RESERVED: [&str; 27] = [
    "add", "allow", "alter", "and", "apply", "batch", "begin", "by", "create", "delete", "drop",
    "from", "in", "insert", "into", "keyspace", "limit", "order", "primary", "select", "set",
    "table", "truncate", "update", "use", "using", "where",
];

/// Parses one statement (an optional trailing `;` is allowed).
///
/// # Errors
/// A [`ParseError`] with the line and column of the first token that does
/// not fit the grammar.
pub fn parse(text: &str) -> Result<Parsed, ParseError> {
    let tokens = tokenize(text)?;
    let mut parser = Parser {
        text,
        tokens,
        position: 0,
        depth: 0,
        bind_markers: Vec::new(),
    };
    let statement = parser.statement()?;
    parser.accept_punct(";");
    if !parser.at_end() {
        return Err(parser.unexpected("the end of the statement"));
    }
    assert_eq!(parser.depth, 0, "parser depth is balanced");
    Ok(Parsed {
        statement,
        bind_markers: parser.bind_markers,
    })
}

struct Parser<'a> {
    text: &'a str,
    tokens: Vec<Token>,
    position: usize,
    depth: usize,
    bind_markers: Vec<Option<String>>,
}

type PResult<T> = Result<T, ParseError>;

impl Parser<'_> {
    // ----- token helpers -------------------------------------------------

    fn peek(&self) -> &TokenKind {
        &self.tokens[self.position.min(self.tokens.len() - 1)].kind
    }

    fn peek_at(&self, ahead: usize) -> &TokenKind {
        &self.tokens[(self.position + ahead).min(self.tokens.len() - 1)].kind
    }

    fn advance(&mut self) -> TokenKind {
        let kind = self.peek().clone();
        if self.position < self.tokens.len() - 1 {
            self.position += 1;
        }
        kind
    }

    fn at_end(&self) -> bool {
        matches!(self.peek(), TokenKind::End)
    }

    fn offset(&self) -> usize {
        self.tokens[self.position.min(self.tokens.len() - 1)].offset
    }

    fn error(&self, message: impl Into<String>) -> ParseError {
        ParseError::at(self.text, self.offset(), message.into())
    }

    fn unexpected(&self, expected: &str) -> ParseError {
        self.error(format!(
            "expected {expected}, found {}",
            describe(self.peek())
        ))
    }

    fn is_keyword(&self, keyword: &str) -> bool {
        self.is_keyword_at(0, keyword)
    }

    fn is_keyword_at(&self, ahead: usize, keyword: &str) -> bool {
        matches!(self.peek_at(ahead), TokenKind::Ident { text, quoted: false } if text == keyword)
    }

    fn accept_keyword(&mut self, keyword: &str) -> bool {
        let found = self.is_keyword(keyword);
        if found {
            self.advance();
        }
        found
    }

    fn expect_keyword(&mut self, keyword: &str) -> PResult<()> {
        if self.accept_keyword(keyword) {
            Ok(())
        } else {
            Err(self.unexpected(&keyword.to_uppercase()))
        }
    }

    fn expect_keywords(&mut self, keywords: &[&str]) -> PResult<()> {
        keywords
            .iter()
            .try_for_each(|keyword| self.expect_keyword(keyword))
    }

    fn is_punct(&self, punct: &str) -> bool {
        matches!(self.peek(), TokenKind::Punct(p) if *p == punct)
    }

    fn accept_punct(&mut self, punct: &str) -> bool {
        let found = self.is_punct(punct);
        if found {
            self.advance();
        }
        found
    }

    fn expect_punct(&mut self, punct: &str) -> PResult<()> {
        if self.accept_punct(punct) {
            Ok(())
        } else {
            Err(self.unexpected(&format!("`{punct}`")))
        }
    }

    fn enter(&mut self) -> PResult<()> {
        if self.depth >= PARSER_DEPTH_MAX {
            return Err(self.error(format!(
                "nesting deeper than PARSER_DEPTH_MAX ({PARSER_DEPTH_MAX})"
            )));
        }
        self.depth += 1;
        Ok(())
    }

    fn leave(&mut self) {
        assert!(self.depth > 0);
        self.depth -= 1;
    }

    /// A name: an unquoted identifier that is not reserved, or a quoted one.
    fn name(&mut self, what: &str) -> PResult<String> {
        match self.peek().clone() {
            TokenKind::Ident { text, quoted } => {
                if !quoted && RESERVED.contains(&text.as_str()) {
                    return Err(self.error(format!(
                        "expected {what}, found reserved keyword `{}` (quote it as \"{text}\" to use it as a name)",
                        text.to_uppercase()
                    )));
                }
                self.advance();
                Ok(text)
            }
            _ => Err(self.unexpected(what)),
        }
    }

    fn qualified_name(&mut self, what: &str) -> PResult<QualifiedName> {
        let first = self.name(what)?;
        if self.accept_punct(".") {
            let name = self.name(what)?;
            Ok(QualifiedName {
                keyspace: Some(first),
                name,
            })
        } else {
            Ok(QualifiedName {
                keyspace: None,
                name: first,
            })
        }
    }

    fn comma_separated<T>(
        &mut self,
        mut item: impl FnMut(&mut Self) -> PResult<T>,
    ) -> PResult<Vec<T>> {
        let mut items = vec![item(self)?];
        while self.accept_punct(",") {
            items.push(item(self)?);
        }
        Ok(items)
    }

    fn if_not_exists(&mut self) -> PResult<bool> {
        if self.accept_keyword("if") {
            self.expect_keywords(&["not", "exists"])?;
            Ok(true)
        } else {
            Ok(false)
        }
    }

    fn if_exists(&mut self) -> PResult<bool> {
        if self.accept_keyword("if") {
            self.expect_keyword("exists")?;
            Ok(true)
        } else {
            Ok(false)
        }
    }

    // ----- statements ------------------------------------------------------

    fn statement(&mut self) -> PResult<Statement> {
        let TokenKind::Ident {
            text,
            quoted: false,
        } = self.peek().clone()
        else {
            return Err(self.unexpected("a statement"));
        };
        match text.as_str() {
            "use" => {
                self.advance();
                Ok(Statement::Use(self.name("a keyspace name")?))
            }
            "create" => self.create(),
            "alter" => self.alter(),
            "drop" => self.drop(),
            "truncate" => {
                self.advance();
                self.accept_keyword("table");
                Ok(Statement::Truncate(self.qualified_name("a table name")?))
            }
            "insert" => Ok(Statement::Insert(self.insert()?)),
            "update" => Ok(Statement::Update(self.update()?)),
            "delete" => Ok(Statement::Delete(self.delete()?)),
            "select" => Ok(Statement::Select(self.select()?)),
            "begin" if self.is_keyword_at(1, "transaction") => self.transaction(),
            "begin" => Ok(Statement::Batch(self.batch()?)),
            "describe" | "desc" => {
                self.advance();
                Ok(Statement::Describe(self.describe()?))
            }
            _ => Err(self.error(format!(
                "unknown statement `{}`: expected SELECT, INSERT, UPDATE, DELETE, BEGIN BATCH, BEGIN TRANSACTION, USE, CREATE, ALTER, DROP, TRUNCATE or DESCRIBE",
                text.to_uppercase()
            ))),
        }
    }

    fn create(&mut self) -> PResult<Statement> {
        self.expect_keyword("create")?;
        if self.accept_keyword("keyspace") || self.accept_keyword("schema") {
            let if_not_exists = self.if_not_exists()?;
            let name = self.name("a keyspace name")?;
            let properties = if self.accept_keyword("with") {
                self.properties()?
            } else {
                Vec::new()
            };
            return Ok(Statement::CreateKeyspace(CreateKeyspace {
                name,
                if_not_exists,
                properties,
            }));
        }
        if self.accept_keyword("table") || self.accept_keyword("columnfamily") {
            return Ok(Statement::CreateTable(self.create_table()?));
        }
        if self.accept_keyword("type") {
            let if_not_exists = self.if_not_exists()?;
            let name = self.qualified_name("a type name")?;
            self.expect_punct("(")?;
            let fields = self.comma_separated(|parser| {
                let field = parser.name("a field name")?;
                let ty = parser.type_name()?;
                Ok((field, ty))
            })?;
            self.expect_punct(")")?;
            return Ok(Statement::CreateType(CreateType {
                name,
                if_not_exists,
                fields,
            }));
        }
        Err(self.unexpected(
            "KEYSPACE, TABLE or TYPE (indexes, views, functions and triggers are not supported)",
        ))
    }

    fn create_table(&mut self) -> PResult<CreateTable> {
        let if_not_exists = self.if_not_exists()?;
        let table = self.qualified_name("a table name")?;
        self.expect_punct("(")?;
        let mut columns = Vec::new();
        let mut primary_key = None;
        loop {
            if self.is_keyword("primary") {
                if primary_key.is_some() {
                    return Err(self.error("PRIMARY KEY given twice"));
                }
                self.advance();
                self.expect_keyword("key")?;
                primary_key = Some(self.primary_key()?);
            } else {
                let name = self.name("a column name or PRIMARY KEY")?;
                let ty = self.type_name()?;
                let is_static = self.accept_keyword("static");
                let is_primary_key = if self.accept_keyword("primary") {
                    self.expect_keyword("key")?;
                    true
                } else {
                    false
                };
                columns.push(ColumnDefinition {
                    name,
                    ty,
                    is_static,
                    is_primary_key,
                });
            }
            if !self.accept_punct(",") {
                break;
            }
            // A trailing comma before `)` is accepted, as Cassandra does.
            if self.is_punct(")") {
                break;
            }
        }
        self.expect_punct(")")?;
        let inline: Vec<String> = columns
            .iter()
            .filter(|column| column.is_primary_key)
            .map(|column| column.name.clone())
            .collect();
        let (partition_key, clustering) = match (primary_key, inline.len()) {
            (Some(_), 1..) => {
                return Err(self.error(
                    "a table has one primary key: declare it inline or in PRIMARY KEY (...), not both",
                ));
            }
            (Some(key), 0) => key,
            (None, 1) => (inline, Vec::new()),
            (None, _) => {
                return Err(self.error(format!(
                    "table {} needs exactly one PRIMARY KEY declaration",
                    table.name
                )));
            }
        };
        let mut clustering_order = Vec::new();
        let mut properties = Vec::new();
        if self.accept_keyword("with") {
            loop {
                if self.accept_keyword("clustering") {
                    self.expect_keywords(&["order", "by"])?;
                    self.expect_punct("(")?;
                    clustering_order = self.comma_separated(|parser| {
                        let column = parser.name("a clustering column")?;
                        let order = parser.order()?;
                        Ok((column, order))
                    })?;
                    self.expect_punct(")")?;
                } else if self.accept_keyword("compact") {
                    self.expect_keyword("storage")?;
                    return Err(self.error("COMPACT STORAGE is not supported"));
                } else {
                    properties.push(self.property()?);
                }
                if !self.accept_keyword("and") {
                    break;
                }
            }
        }
        Ok(CreateTable {
            table,
            if_not_exists,
            columns,
            partition_key,
            clustering,
            clustering_order,
            properties,
        })
    }

    fn primary_key(&mut self) -> PResult<(Vec<String>, Vec<String>)> {
        self.expect_punct("(")?;
        let partition_key = if self.accept_punct("(") {
            let columns = self.comma_separated(|parser| parser.name("a partition key column"))?;
            self.expect_punct(")")?;
            columns
        } else {
            vec![self.name("a partition key column")?]
        };
        let mut clustering = Vec::new();
        while self.accept_punct(",") {
            clustering.push(self.name("a clustering column")?);
        }
        self.expect_punct(")")?;
        Ok((partition_key, clustering))
    }

    fn order(&mut self) -> PResult<Order> {
        if self.accept_keyword("desc") {
            Ok(Order::Desc)
        } else {
            self.accept_keyword("asc");
            Ok(Order::Asc)
        }
    }

    fn properties(&mut self) -> PResult<Vec<Property>> {
        let mut properties = vec![self.property()?];
        while self.accept_keyword("and") {
            properties.push(self.property()?);
        }
        Ok(properties)
    }

    fn property(&mut self) -> PResult<Property> {
        let name = self.name("an option name")?;
        self.expect_punct("=")?;
        let value = self.term()?;
        Ok(Property { name, value })
    }

    fn alter(&mut self) -> PResult<Statement> {
        self.expect_keyword("alter")?;
        if self.accept_keyword("keyspace") || self.accept_keyword("schema") {
            let name = self.name("a keyspace name")?;
            self.expect_keyword("with")?;
            let properties = self.properties()?;
            return Ok(Statement::AlterKeyspace { name, properties });
        }
        if self.accept_keyword("table") || self.accept_keyword("columnfamily") {
            let table = self.qualified_name("a table name")?;
            let action = if self.accept_keyword("add") {
                let parenthesized = self.accept_punct("(");
                let columns = self.comma_separated(|parser| {
                    let name = parser.name("a column name")?;
                    let ty = parser.type_name()?;
                    let is_static = parser.accept_keyword("static");
                    Ok(ColumnDefinition {
                        name,
                        ty,
                        is_static,
                        is_primary_key: false,
                    })
                })?;
                if parenthesized {
                    self.expect_punct(")")?;
                }
                AlterTableAction::Add(columns)
            } else if self.accept_keyword("drop") {
                let parenthesized = self.accept_punct("(");
                let columns = self.comma_separated(|parser| parser.name("a column name"))?;
                if parenthesized {
                    self.expect_punct(")")?;
                }
                AlterTableAction::Drop(columns)
            } else if self.accept_keyword("rename") {
                AlterTableAction::Rename(self.renames()?)
            } else if self.accept_keyword("with") {
                AlterTableAction::With(self.properties()?)
            } else if self.is_keyword("alter") {
                return Err(
                    self.error("ALTER TABLE ... ALTER (changing a column's type) is not supported")
                );
            } else {
                return Err(self.unexpected("ADD, DROP, RENAME or WITH"));
            };
            return Ok(Statement::AlterTable { table, action });
        }
        if self.accept_keyword("type") {
            let name = self.qualified_name("a type name")?;
            let action = if self.accept_keyword("add") {
                let field = self.name("a field name")?;
                AlterTypeAction::Add(field, self.type_name()?)
            } else if self.accept_keyword("rename") {
                AlterTypeAction::Rename(self.renames()?)
            } else {
                return Err(self.unexpected("ADD or RENAME"));
            };
            return Ok(Statement::AlterType { name, action });
        }
        Err(self.unexpected("KEYSPACE, TABLE or TYPE"))
    }

    fn renames(&mut self) -> PResult<Vec<(String, String)>> {
        let mut renames = Vec::new();
        loop {
            let from = self.name("a name")?;
            self.expect_keyword("to")?;
            let to = self.name("a name")?;
            renames.push((from, to));
            if !self.accept_keyword("and") {
                return Ok(renames);
            }
        }
    }

    fn drop(&mut self) -> PResult<Statement> {
        self.expect_keyword("drop")?;
        if self.accept_keyword("keyspace") || self.accept_keyword("schema") {
            let if_exists = self.if_exists()?;
            let name = self.name("a keyspace name")?;
            return Ok(Statement::DropKeyspace { name, if_exists });
        }
        if self.accept_keyword("table") || self.accept_keyword("columnfamily") {
            let if_exists = self.if_exists()?;
            let table = self.qualified_name("a table name")?;
            return Ok(Statement::DropTable { table, if_exists });
        }
        if self.accept_keyword("type") {
            let if_exists = self.if_exists()?;
            let name = self.qualified_name("a type name")?;
            return Ok(Statement::DropType { name, if_exists });
        }
        Err(self.unexpected("KEYSPACE, TABLE or TYPE"))
    }

    /// A type, normalised to lowercase text with `, ` between parameters.
    fn type_name(&mut self) -> PResult<TypeName> {
        self.enter()?;
        let mut text = match self.advance() {
            TokenKind::Ident {
                text,
                quoted: false,
            } => text,
            TokenKind::Ident { text, quoted: true } => format!("\"{}\"", text.replace('"', "\"\"")),
            other => {
                self.position -= 1;
                self.leave();
                return Err(self.error(format!("expected a type, found {}", describe(&other))));
            }
        };
        if self.accept_punct(".") {
            let name = self.name("a type name")?;
            text = format!("{text}.{name}");
        }
        if self.accept_punct("<") {
            let parameters = self.comma_separated(|parser| parser.type_name())?;
            self.expect_punct(">")?;
            let joined: Vec<String> = parameters.into_iter().map(|ty| ty.0).collect();
            text = format!("{text}<{}>", joined.join(", "));
        }
        self.leave();
        Ok(TypeName(text))
    }

    fn using(&mut self) -> PResult<Using> {
        let mut using = Using::default();
        if !self.accept_keyword("using") {
            return Ok(using);
        }
        loop {
            if self.accept_keyword("ttl") {
                using.ttl = Some(self.term()?);
            } else if self.accept_keyword("timestamp") {
                using.timestamp = Some(self.term()?);
            } else {
                return Err(self.unexpected("TTL or TIMESTAMP"));
            }
            if !self.accept_keyword("and") {
                return Ok(using);
            }
        }
    }

    fn insert(&mut self) -> PResult<Insert> {
        self.expect_keywords(&["insert", "into"])?;
        let table = self.qualified_name("a table name")?;
        let values = if self.accept_keyword("json") {
            let json = self.term()?;
            let default_unset = if self.accept_keyword("default") {
                if self.accept_keyword("unset") {
                    true
                } else {
                    self.expect_keyword("null")?;
                    false
                }
            } else {
                false
            };
            InsertValues::Json {
                json,
                default_unset,
            }
        } else {
            self.expect_punct("(")?;
            let columns = self.comma_separated(|parser| parser.name("a column name"))?;
            self.expect_punct(")")?;
            self.expect_keyword("values")?;
            self.expect_punct("(")?;
            let values = self.comma_separated(|parser| parser.term())?;
            self.expect_punct(")")?;
            if columns.len() != values.len() {
                return Err(self.error(format!(
                    "INSERT names {} columns but gives {} values",
                    columns.len(),
                    values.len()
                )));
            }
            InsertValues::Values { columns, values }
        };
        let if_not_exists = self.if_not_exists()?;
        let using = self.using()?;
        // Cassandra also accepts USING before IF NOT EXISTS.
        let if_not_exists = if_not_exists || self.if_not_exists()?;
        Ok(Insert {
            table,
            values,
            if_not_exists,
            using,
        })
    }

    fn update(&mut self) -> PResult<Update> {
        self.expect_keyword("update")?;
        let table = self.qualified_name("a table name")?;
        let using = self.using()?;
        self.expect_keyword("set")?;
        let assignments = self.comma_separated(|parser| parser.assignment())?;
        let where_clause = self.where_clause()?;
        let condition = self.condition()?;
        Ok(Update {
            table,
            using,
            assignments,
            where_clause,
            condition,
        })
    }

    fn assignment(&mut self) -> PResult<Assignment> {
        let column = self.name("a column name")?;
        if self.accept_punct("[") {
            let key = self.term()?;
            self.expect_punct("]")?;
            self.expect_punct("=")?;
            let value = self.term()?;
            return Ok(Assignment::SetElement { column, key, value });
        }
        if self.accept_punct(".") {
            let field = self.name("a field name")?;
            self.expect_punct("=")?;
            let value = self.term()?;
            return Ok(Assignment::SetField {
                column,
                field,
                value,
            });
        }
        if self.accept_punct("+") {
            self.expect_punct("=")?;
            let value = self.term()?;
            return Ok(Assignment::Add { column, value });
        }
        if self.is_punct("-") && matches!(self.peek_at(1), TokenKind::Punct("=")) {
            self.advance();
            self.advance();
            let value = self.term()?;
            return Ok(Assignment::Subtract { column, value });
        }
        self.expect_punct("=")?;
        // `c = c + v` / `c = c - v`
        if matches!(self.peek(), TokenKind::Ident { text, .. } if *text == column)
            && matches!(self.peek_at(1), TokenKind::Punct("+" | "-"))
        {
            self.advance();
            let add = self.advance() == TokenKind::Punct("+");
            let value = self.term()?;
            return Ok(if add {
                Assignment::Add { column, value }
            } else {
                Assignment::Subtract { column, value }
            });
        }
        let value = self.term()?;
        if self.accept_punct("+") {
            let other = self.name("the column being prepended to")?;
            if other != column {
                return Err(self.error(format!(
                    "only `{column} = value + {column}` (prepend) is supported, not `+ {other}`"
                )));
            }
            return Ok(Assignment::Prepend { column, value });
        }
        Ok(Assignment::Set { column, value })
    }

    fn delete(&mut self) -> PResult<Delete> {
        self.expect_keyword("delete")?;
        let mut targets = Vec::new();
        if !self.is_keyword("from") {
            targets = self.comma_separated(|parser| {
                let column = parser.name("a column name")?;
                let element = if parser.accept_punct("[") {
                    let element = parser.term()?;
                    parser.expect_punct("]")?;
                    Some(element)
                } else if parser.accept_punct(".") {
                    Some(Term::Identifier(parser.name("a field name")?))
                } else {
                    None
                };
                Ok(DeleteTarget { column, element })
            })?;
        }
        self.expect_keyword("from")?;
        let table = self.qualified_name("a table name")?;
        let using = self.using()?;
        let where_clause = self.where_clause()?;
        let condition = self.condition()?;
        Ok(Delete {
            targets,
            table,
            using,
            where_clause,
            condition,
        })
    }

    fn condition(&mut self) -> PResult<Option<Condition>> {
        if !self.accept_keyword("if") {
            return Ok(None);
        }
        if self.accept_keyword("exists") {
            return Ok(Some(Condition::Exists));
        }
        if self.accept_keyword("not") {
            self.expect_keyword("exists")?;
            return Ok(Some(Condition::NotExists));
        }
        let mut conditions = Vec::new();
        loop {
            let column = self.name("a column name")?;
            let element = if self.accept_punct("[") {
                let element = self.term()?;
                self.expect_punct("]")?;
                Some(element)
            } else {
                None
            };
            let operator = self.operator()?;
            let value = self.term()?;
            conditions.push(ColumnCondition {
                column,
                element,
                operator,
                value,
            });
            if !self.accept_keyword("and") {
                return Ok(Some(Condition::Columns(conditions)));
            }
        }
    }

    fn operator(&mut self) -> PResult<Operator> {
        let operator = match self.peek() {
            TokenKind::Punct("=") => Operator::Equal,
            TokenKind::Punct("!=") => Operator::NotEqual,
            TokenKind::Punct("<") => Operator::Less,
            TokenKind::Punct("<=") => Operator::LessOrEqual,
            TokenKind::Punct(">") => Operator::Greater,
            TokenKind::Punct(">=") => Operator::GreaterOrEqual,
            TokenKind::Ident {
                text,
                quoted: false,
            } if text == "like" => Operator::Like,
            TokenKind::Ident {
                text,
                quoted: false,
            } if text == "contains" => {
                self.advance();
                return Ok(if self.accept_keyword("key") {
                    Operator::ContainsKey
                } else {
                    Operator::Contains
                });
            }
            _ => return Err(self.unexpected("an operator (=, !=, <, <=, >, >=, CONTAINS, LIKE)")),
        };
        self.advance();
        Ok(operator)
    }

    fn where_clause(&mut self) -> PResult<Vec<Relation>> {
        if !self.accept_keyword("where") {
            return Ok(Vec::new());
        }
        let mut relations = vec![self.relation()?];
        while self.accept_keyword("and") {
            relations.push(self.relation()?);
        }
        Ok(relations)
    }

    fn relation(&mut self) -> PResult<Relation> {
        if self.is_keyword("token") && matches!(self.peek_at(1), TokenKind::Punct("(")) {
            self.advance();
            self.advance();
            let columns = self.comma_separated(|parser| parser.name("a partition key column"))?;
            self.expect_punct(")")?;
            let operator = self.operator()?;
            let value = self.term()?;
            return Ok(Relation::Token {
                columns,
                operator,
                value,
            });
        }
        if self.accept_punct("(") {
            let columns = self.comma_separated(|parser| parser.name("a clustering column"))?;
            self.expect_punct(")")?;
            if self.accept_keyword("in") {
                let values = self.in_values()?;
                return Ok(Relation::MultiIn { columns, values });
            }
            let operator = self.operator()?;
            let value = self.term()?;
            return Ok(Relation::MultiCompare {
                columns,
                operator,
                value,
            });
        }
        let column = self.name("a column name")?;
        if self.accept_keyword("in") {
            let values = self.in_values()?;
            return Ok(Relation::In { column, values });
        }
        if self.accept_keyword("is") {
            self.expect_keywords(&["not", "null"])?;
            return Ok(Relation::IsNotNull(column));
        }
        let operator = self.operator()?;
        let value = self.term()?;
        Ok(Relation::Compare {
            column,
            operator,
            value,
        })
    }

    fn in_values(&mut self) -> PResult<InValues> {
        if let Some(marker) = self.bind_marker() {
            return Ok(InValues::Bind(marker));
        }
        self.expect_punct("(")?;
        if self.accept_punct(")") {
            return Ok(InValues::List(Vec::new()));
        }
        let values = self.comma_separated(|parser| parser.term())?;
        self.expect_punct(")")?;
        Ok(InValues::List(values))
    }

    fn bind_marker(&mut self) -> Option<BindMarker> {
        let name = match self.peek() {
            TokenKind::Question => None,
            TokenKind::Named(name) => Some(name.clone()),
            _ => return None,
        };
        self.advance();
        let index = self.bind_markers.len();
        self.bind_markers.push(name.clone());
        Some(BindMarker { index, name })
    }

    fn select(&mut self) -> PResult<Select> {
        self.expect_keyword("select")?;
        let json = self.accept_keyword("json");
        let distinct = self.accept_keyword("distinct");
        let selection = if self.accept_punct("*") {
            Selection::All
        } else {
            Selection::Items(self.comma_separated(|parser| parser.select_item())?)
        };
        self.expect_keyword("from")?;
        let table = self.qualified_name("a table name")?;
        self.select_rest(json, distinct, selection, table)
    }

    fn select_rest(
        &mut self,
        json: bool,
        distinct: bool,
        selection: Selection,
        table: QualifiedName,
    ) -> PResult<Select> {
        let where_clause = self.where_clause()?;
        let mut group_by = Vec::new();
        if self.accept_keyword("group") {
            self.expect_keyword("by")?;
            group_by = self.comma_separated(|parser| parser.name("a primary key column"))?;
        }
        let mut order_by = Vec::new();
        if self.accept_keyword("order") {
            self.expect_keyword("by")?;
            order_by = self.comma_separated(|parser| {
                let column = parser.name("a clustering column")?;
                let order = parser.order()?;
                Ok((column, order))
            })?;
        }
        let mut per_partition_limit = None;
        if self.accept_keyword("per") {
            self.expect_keywords(&["partition", "limit"])?;
            per_partition_limit = Some(self.term()?);
        }
        let limit = if self.accept_keyword("limit") {
            Some(self.term()?)
        } else {
            None
        };
        let allow_filtering = if self.accept_keyword("allow") {
            self.expect_keyword("filtering")?;
            true
        } else {
            false
        };
        Ok(Select {
            distinct,
            json,
            selection,
            table,
            where_clause,
            group_by,
            order_by,
            per_partition_limit,
            limit,
            allow_filtering,
        })
    }

    fn select_item(&mut self) -> PResult<SelectItem> {
        let selector = self.selector()?;
        let alias = if self.accept_keyword("as") {
            Some(self.name("an alias")?)
        } else {
            None
        };
        Ok(SelectItem { selector, alias })
    }

    fn selector(&mut self) -> PResult<Selector> {
        self.enter()?;
        let selector = self.selector_inner();
        self.leave();
        selector
    }

    fn selector_inner(&mut self) -> PResult<Selector> {
        let mut selector = match self.peek().clone() {
            TokenKind::Ident {
                text,
                quoted: false,
            } if matches!(self.peek_at(1), TokenKind::Punct("(")) => {
                self.advance();
                self.advance();
                match text.as_str() {
                    "writetime" | "ttl" => {
                        let column = self.name("a column name")?;
                        self.expect_punct(")")?;
                        if text == "ttl" {
                            Selector::Ttl(column)
                        } else {
                            Selector::WriteTime(column)
                        }
                    }
                    "count"
                        if self.is_punct("*")
                            || matches!(self.peek(), TokenKind::Integer(n) if n == "1") =>
                    {
                        self.advance();
                        self.expect_punct(")")?;
                        Selector::CountRows
                    }
                    _ => {
                        let args = if self.accept_punct(")") {
                            Vec::new()
                        } else {
                            let args = self.comma_separated(|parser| parser.selector())?;
                            self.expect_punct(")")?;
                            args
                        };
                        Selector::Function { name: text, args }
                    }
                }
            }
            TokenKind::Ident { .. }
                if !self.is_keyword("null")
                    && !self.is_keyword("true")
                    && !self.is_keyword("false") =>
            {
                Selector::Column(self.name("a column name")?)
            }
            _ => Selector::Term(self.term()?),
        };
        while self.accept_punct(".") {
            let field = self.name("a field name")?;
            selector = Selector::Field(Box::new(selector), field);
        }
        Ok(selector)
    }

    fn batch(&mut self) -> PResult<Batch> {
        self.expect_keyword("begin")?;
        let kind = if self.accept_keyword("unlogged") {
            BatchKind::Unlogged
        } else if self.accept_keyword("counter") {
            BatchKind::Counter
        } else {
            self.accept_keyword("logged");
            BatchKind::Logged
        };
        self.expect_keyword("batch")?;
        let using = self.using()?;
        let mut statements = Vec::new();
        while !self.is_keyword("apply") {
            statements.push(self.modification("in a batch")?);
            self.accept_punct(";");
        }
        self.expect_keywords(&["apply", "batch"])?;
        Ok(Batch {
            kind,
            using,
            statements,
        })
    }

    fn modification(&mut self, context: &str) -> PResult<Statement> {
        if self.is_keyword("insert") {
            Ok(Statement::Insert(self.insert()?))
        } else if self.is_keyword("update") {
            Ok(Statement::Update(self.update()?))
        } else if self.is_keyword("delete") {
            Ok(Statement::Delete(self.delete()?))
        } else {
            Err(self.unexpected(&format!("INSERT, UPDATE or DELETE {context}")))
        }
    }

    fn transaction(&mut self) -> PResult<Statement> {
        self.expect_keywords(&["begin", "transaction"])?;
        let mut block = TransactionBlock {
            lets: Vec::new(),
            select: None,
            condition: None,
            modifications: Vec::new(),
        };
        while self.accept_keyword("let") {
            let name = self.name("a row name")?;
            if block.lets.iter().any(|binding| binding.name == name) {
                return Err(self.error(format!("LET name `{name}` is used twice")));
            }
            self.expect_punct("=")?;
            self.expect_punct("(")?;
            let select = self.select()?;
            self.expect_punct(")")?;
            self.expect_punct(";")?;
            block.lets.push(Let { name, select });
        }
        if self.is_keyword("select") {
            block.select = Some(self.transaction_select()?);
            self.expect_punct(";")?;
        }
        if self.accept_keyword("if") {
            let mut conditions = vec![self.transaction_condition()?];
            while self.accept_keyword("and") {
                conditions.push(self.transaction_condition()?);
            }
            self.expect_keyword("then")?;
            block.condition = Some(conditions);
            while !self.is_keyword("end") {
                block
                    .modifications
                    .push(self.modification("inside IF ... THEN")?);
                self.expect_punct(";")?;
            }
            self.expect_keywords(&["end", "if"])?;
        } else {
            while !self.is_keyword("commit") {
                block
                    .modifications
                    .push(self.modification("in a transaction")?);
                self.expect_punct(";")?;
            }
        }
        self.expect_keywords(&["commit", "transaction"])?;
        Ok(Statement::Transaction(block))
    }

    fn transaction_select(&mut self) -> PResult<TransactionSelect> {
        // `SELECT a.b, c.d;` selects row references; anything with FROM is a query.
        let start = self.position;
        self.expect_keyword("select")?;
        let is_references = matches!(self.peek(), TokenKind::Ident { .. })
            && matches!(self.peek_at(1), TokenKind::Punct("."))
            && {
                let mut ahead = 0;
                while !matches!(self.peek_at(ahead), TokenKind::End | TokenKind::Punct(";")) {
                    if self.is_keyword_at(ahead, "from") {
                        break;
                    }
                    ahead += 1;
                }
                !self.is_keyword_at(ahead, "from")
            };
        if is_references {
            let references = self.comma_separated(|parser| parser.reference())?;
            return Ok(TransactionSelect::References(references));
        }
        self.position = start;
        Ok(TransactionSelect::Query(Box::new(self.select()?)))
    }

    fn reference(&mut self) -> PResult<Term> {
        let row = self.name("a LET row name")?;
        self.expect_punct(".")?;
        let column = self.name("a column name")?;
        Ok(Term::Reference { row, column })
    }

    fn transaction_operand(&mut self) -> PResult<Term> {
        if matches!(self.peek(), TokenKind::Ident { .. })
            && matches!(self.peek_at(1), TokenKind::Punct("."))
        {
            return self.reference();
        }
        self.term()
    }

    fn transaction_condition(&mut self) -> PResult<TransactionCondition> {
        let left = self.transaction_operand()?;
        if self.accept_keyword("is") {
            if self.accept_keyword("not") {
                self.expect_keyword("null")?;
                return Ok(TransactionCondition::IsNotNull(left));
            }
            self.expect_keyword("null")?;
            return Ok(TransactionCondition::IsNull(left));
        }
        let operator = self.operator()?;
        let right = self.transaction_operand()?;
        Ok(TransactionCondition::Compare {
            left,
            operator,
            right,
        })
    }

    fn describe(&mut self) -> PResult<Describe> {
        if self.accept_keyword("cluster") {
            return Ok(Describe::Cluster);
        }
        if self.accept_keyword("keyspaces") {
            return Ok(Describe::Keyspaces);
        }
        if self.accept_keyword("tables") || self.accept_keyword("columnfamilies") {
            return Ok(Describe::Tables);
        }
        if self.accept_keyword("types") {
            return Ok(Describe::Types);
        }
        if self.accept_keyword("functions") {
            return Ok(Describe::Functions);
        }
        if self.accept_keyword("aggregates") {
            return Ok(Describe::Aggregates);
        }
        if self.accept_keyword("full") {
            self.expect_keyword("schema")?;
            return Ok(Describe::Schema { full: true });
        }
        if self.accept_keyword("schema") {
            return Ok(Describe::Schema { full: false });
        }
        if self.accept_keyword("keyspace") {
            if self.at_end() || self.is_punct(";") {
                return Ok(Describe::Keyspace(None));
            }
            return Ok(Describe::Keyspace(Some(self.name("a keyspace name")?)));
        }
        if self.accept_keyword("table") || self.accept_keyword("columnfamily") {
            return Ok(Describe::Table(self.qualified_name("a table name")?));
        }
        if self.accept_keyword("type") {
            return Ok(Describe::Type(self.qualified_name("a type name")?));
        }
        Ok(Describe::Name(self.qualified_name("what to describe")?))
    }

    // ----- terms -------------------------------------------------------------

    fn term(&mut self) -> PResult<Term> {
        self.enter()?;
        let term = self.term_inner();
        self.leave();
        term
    }

    fn term_inner(&mut self) -> PResult<Term> {
        if let Some(marker) = self.bind_marker() {
            return Ok(Term::Bind(marker));
        }
        let token = self.peek().clone();
        match token {
            TokenKind::String(value) => {
                self.advance();
                Ok(Term::String(value))
            }
            TokenKind::Integer(digits) => {
                self.advance();
                Ok(Term::Integer(digits))
            }
            TokenKind::Float(digits) => {
                self.advance();
                Ok(Term::Float(digits))
            }
            TokenKind::Hex(bytes) => {
                self.advance();
                Ok(Term::Blob(bytes))
            }
            TokenKind::Uuid(uuid) => {
                self.advance();
                Ok(Term::Uuid(uuid))
            }
            TokenKind::Duration(duration) => {
                self.advance();
                Ok(Term::Duration(duration))
            }
            TokenKind::Punct("-") => {
                self.advance();
                match self.advance() {
                    TokenKind::Integer(digits) => Ok(Term::Integer(format!("-{digits}"))),
                    TokenKind::Float(digits) => Ok(Term::Float(format!("-{digits}"))),
                    TokenKind::Duration(duration) => Ok(Term::Duration(format!("-{duration}"))),
                    TokenKind::Ident {
                        text,
                        quoted: false,
                    } if text == "infinity" => Ok(Term::Float("-Infinity".into())),
                    _ => {
                        self.position -= 1;
                        Err(self.unexpected("a number after `-`"))
                    }
                }
            }
            TokenKind::Punct("[") => {
                self.advance();
                let elements = self.term_list("]")?;
                Ok(Term::List(elements))
            }
            TokenKind::Punct("(") => {
                self.advance();
                let elements = self.term_list(")")?;
                Ok(Term::Tuple(elements))
            }
            TokenKind::Punct("{") => self.brace_literal(),
            TokenKind::Ident {
                text,
                quoted: false,
            } => {
                self.advance();
                match text.as_str() {
                    "null" => Ok(Term::Null),
                    "true" => Ok(Term::Boolean(true)),
                    "false" => Ok(Term::Boolean(false)),
                    "nan" => Ok(Term::Float("NaN".into())),
                    "infinity" => Ok(Term::Float("Infinity".into())),
                    _ if self.accept_punct("(") => {
                        let args = self.term_list(")")?;
                        Ok(Term::Function { name: text, args })
                    }
                    _ => Ok(Term::Identifier(text)),
                }
            }
            TokenKind::Ident { text, quoted: true } => {
                self.advance();
                Ok(Term::Identifier(text))
            }
            _ => Err(self.unexpected("a value")),
        }
    }

    /// Terms separated by commas up to `close` (already past the opener).
    fn term_list(&mut self, close: &str) -> PResult<Vec<Term>> {
        if self.accept_punct(close) {
            return Ok(Vec::new());
        }
        let elements = self.comma_separated(|parser| parser.term())?;
        self.expect_punct(close)?;
        Ok(elements)
    }

    /// `{}`, `{a, b}` (set), `{k: v}` (map, or a UDT with field names as keys).
    fn brace_literal(&mut self) -> PResult<Term> {
        self.expect_punct("{")?;
        if self.accept_punct("}") {
            return Ok(Term::Map(Vec::new()));
        }
        let first = self.term()?;
        if self.accept_punct(":") {
            let value = self.term()?;
            let mut entries = vec![(first, value)];
            while self.accept_punct(",") {
                let key = self.term()?;
                self.expect_punct(":")?;
                let value = self.term()?;
                entries.push((key, value));
            }
            self.expect_punct("}")?;
            return Ok(Term::Map(entries));
        }
        let mut elements = vec![first];
        while self.accept_punct(",") {
            elements.push(self.term()?);
        }
        self.expect_punct("}")?;
        Ok(Term::Set(elements))
    }
}

fn describe(token: &TokenKind) -> String {
    match token {
        TokenKind::Ident {
            text,
            quoted: false,
        } => format!("`{text}`"),
        TokenKind::Ident { text, quoted: true } => format!("\"{text}\""),
        TokenKind::String(value) => format!("string '{value}'"),
        TokenKind::Integer(digits) | TokenKind::Float(digits) => format!("number {digits}"),
        TokenKind::Hex(_) => "a blob literal".into(),
        TokenKind::Uuid(uuid) => format!("uuid {uuid}"),
        TokenKind::Duration(duration) => format!("duration {duration}"),
        TokenKind::Question => "`?`".into(),
        TokenKind::Named(name) => format!("`:{name}`"),
        TokenKind::Punct(punct) => format!("`{punct}`"),
        TokenKind::End => "the end of the statement".into(),
    }
}
