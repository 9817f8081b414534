//! The statement AST. It carries names and literals as written (names
//! already case-normalised), never typed values: the endpoint types a
//! literal against the column it is assigned to or compared with.

/// A parsed statement with its bind markers in order of appearance.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    pub statement: Statement,
    /// One entry per bind marker, in order; `Some(name)` for `:name`.
    pub bind_markers: Vec<Option<String>>,
}

/// `keyspace.name` or `name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QualifiedName {
    pub keyspace: Option<String>,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Statement {
    Use(String),
    CreateKeyspace(CreateKeyspace),
    AlterKeyspace {
        name: String,
        properties: Vec<Property>,
    },
    DropKeyspace {
        name: String,
        if_exists: bool,
    },
    CreateTable(CreateTable),
    AlterTable {
        table: QualifiedName,
        action: AlterTableAction,
    },
    DropTable {
        table: QualifiedName,
        if_exists: bool,
    },
    CreateType(CreateType),
    AlterType {
        name: QualifiedName,
        action: AlterTypeAction,
    },
    DropType {
        name: QualifiedName,
        if_exists: bool,
    },
    Truncate(QualifiedName),
    Insert(Insert),
    Update(Update),
    Delete(Delete),
    Select(Select),
    Batch(Batch),
    Transaction(TransactionBlock),
    Describe(Describe),
}

/// `name = value` in a `WITH` clause (`replication = {...}`, `comment = '...'`).
#[derive(Debug, Clone, PartialEq)]
pub struct Property {
    pub name: String,
    pub value: Term,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CreateKeyspace {
    pub name: String,
    pub if_not_exists: bool,
    pub properties: Vec<Property>,
}

/// A CQL type as written, normalised (`map<text, frozen<list<int>>>`); the
/// endpoint resolves it with the schema's user types.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeName(pub String);

#[derive(Debug, Clone, PartialEq)]
pub struct ColumnDefinition {
    pub name: String,
    pub ty: TypeName,
    pub is_static: bool,
    /// `name type PRIMARY KEY`.
    pub is_primary_key: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    Asc,
    Desc,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CreateTable {
    pub table: QualifiedName,
    pub if_not_exists: bool,
    pub columns: Vec<ColumnDefinition>,
    /// `PRIMARY KEY ((a, b), c, d)`: partition key columns, then clustering.
    pub partition_key: Vec<String>,
    pub clustering: Vec<String>,
    pub clustering_order: Vec<(String, Order)>,
    pub properties: Vec<Property>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum AlterTableAction {
    Add(Vec<ColumnDefinition>),
    Drop(Vec<String>),
    Rename(Vec<(String, String)>),
    With(Vec<Property>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct CreateType {
    pub name: QualifiedName,
    pub if_not_exists: bool,
    pub fields: Vec<(String, TypeName)>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum AlterTypeAction {
    Add(String, TypeName),
    Rename(Vec<(String, String)>),
}

/// A value as written.
#[derive(Debug, Clone, PartialEq)]
pub enum Term {
    Null,
    Boolean(bool),
    /// Decimal digits with an optional leading `-`.
    Integer(String),
    /// Also `NaN`, `Infinity`, `-Infinity`.
    Float(String),
    String(String),
    Blob(Vec<u8>),
    Uuid(String),
    Duration(String),
    List(Vec<Term>),
    Set(Vec<Term>),
    /// `{k: v, ...}`; `{}` is an empty map, which also stands for an empty set.
    Map(Vec<(Term, Term)>),
    Tuple(Vec<Term>),
    /// `{field: value, ...}` written where a user type is expected is parsed
    /// as a `Map` with identifier keys; see [`Term::Map`].
    Bind(BindMarker),
    /// `now()`, `uuid()`, `token(?)`, `toTimestamp(now())`.
    Function {
        name: String,
        args: Vec<Term>,
    },
    /// An identifier in value position: a UDT field name inside `{...}`, or
    /// a column reference in a transaction block condition.
    Identifier(String),
    /// `row.column` in a transaction block.
    Reference {
        row: String,
        column: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindMarker {
    /// Position among the statement's markers, from 0.
    pub index: usize,
    pub name: Option<String>,
}

/// `USING TTL ... AND TIMESTAMP ...`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Using {
    pub ttl: Option<Term>,
    /// Parsed so the endpoint can refuse it with a clear message.
    pub timestamp: Option<Term>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum InsertValues {
    Values {
        columns: Vec<String>,
        values: Vec<Term>,
    },
    /// `INSERT ... JSON '...' [DEFAULT NULL | DEFAULT UNSET]`.
    Json { json: Term, default_unset: bool },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Insert {
    pub table: QualifiedName,
    pub values: InsertValues,
    pub if_not_exists: bool,
    pub using: Using,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Assignment {
    /// `c = v`
    Set { column: String, value: Term },
    /// `c[k] = v`
    SetElement {
        column: String,
        key: Term,
        value: Term,
    },
    /// `c.field = v`
    SetField {
        column: String,
        field: String,
        value: Term,
    },
    /// `c = c + v` or `c += v`
    Add { column: String, value: Term },
    /// `c = c - v` or `c -= v`
    Subtract { column: String, value: Term },
    /// `c = v + c`
    Prepend { column: String, value: Term },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operator {
    Equal,
    NotEqual,
    Less,
    LessOrEqual,
    Greater,
    GreaterOrEqual,
    Contains,
    ContainsKey,
    Like,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Relation {
    /// `c op v`
    Compare {
        column: String,
        operator: Operator,
        value: Term,
    },
    /// `c IN (v, ...)` or `c IN ?`
    In {
        column: String,
        values: InValues,
    },
    /// `(a, b) op (v, w)`
    MultiCompare {
        columns: Vec<String>,
        operator: Operator,
        value: Term,
    },
    /// `(a, b) IN ((v, w), ...)`
    MultiIn {
        columns: Vec<String>,
        values: InValues,
    },
    /// `token(a, b) op token(?, ?)` or `token(a) op -123`
    Token {
        columns: Vec<String>,
        operator: Operator,
        value: Term,
    },
    IsNotNull(String),
}

#[derive(Debug, Clone, PartialEq)]
pub enum InValues {
    List(Vec<Term>),
    Bind(BindMarker),
}

/// A conditional update's `IF`.
#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    NotExists,
    Exists,
    Columns(Vec<ColumnCondition>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct ColumnCondition {
    pub column: String,
    /// `IF c[k] = v`
    pub element: Option<Term>,
    pub operator: Operator,
    pub value: Term,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Update {
    pub table: QualifiedName,
    pub using: Using,
    pub assignments: Vec<Assignment>,
    pub where_clause: Vec<Relation>,
    pub condition: Option<Condition>,
}

/// A column, or an element of a collection column, that `DELETE` removes.
#[derive(Debug, Clone, PartialEq)]
pub struct DeleteTarget {
    pub column: String,
    pub element: Option<Term>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Delete {
    pub targets: Vec<DeleteTarget>,
    pub table: QualifiedName,
    pub using: Using,
    pub where_clause: Vec<Relation>,
    pub condition: Option<Condition>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Selector {
    Column(String),
    WriteTime(String),
    Ttl(String),
    /// `count(*)` and `count(1)`.
    CountRows,
    /// `token(a, b)`, `min(c)`, `toJson(c)`, ...
    Function {
        name: String,
        args: Vec<Selector>,
    },
    Term(Term),
    /// `c.field`
    Field(Box<Selector>, String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct SelectItem {
    pub selector: Selector,
    pub alias: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Selection {
    All,
    Items(Vec<SelectItem>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Select {
    pub distinct: bool,
    pub json: bool,
    pub selection: Selection,
    pub table: QualifiedName,
    pub where_clause: Vec<Relation>,
    pub group_by: Vec<String>,
    pub order_by: Vec<(String, Order)>,
    pub per_partition_limit: Option<Term>,
    pub limit: Option<Term>,
    pub allow_filtering: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchKind {
    Logged,
    Unlogged,
    Counter,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub kind: BatchKind,
    pub using: Using,
    /// Only `Insert`, `Update` and `Delete`.
    pub statements: Vec<Statement>,
}

/// `LET name = (SELECT ...)` in a transaction block.
#[derive(Debug, Clone, PartialEq)]
pub struct Let {
    pub name: String,
    pub select: Select,
}

/// What a transaction block returns.
#[derive(Debug, Clone, PartialEq)]
pub enum TransactionSelect {
    /// `SELECT ... FROM ...` (a single-partition select).
    Query(Box<Select>),
    /// `SELECT row.column, ...` over `LET` rows.
    References(Vec<Term>),
}

/// `left op right`, `ref IS NULL`, `ref IS NOT NULL` in a block's `IF`.
#[derive(Debug, Clone, PartialEq)]
pub enum TransactionCondition {
    Compare {
        left: Term,
        operator: Operator,
        right: Term,
    },
    IsNull(Term),
    IsNotNull(Term),
}

/// `BEGIN TRANSACTION ... COMMIT TRANSACTION`.
#[derive(Debug, Clone, PartialEq)]
pub struct TransactionBlock {
    pub lets: Vec<Let>,
    pub select: Option<TransactionSelect>,
    /// The `IF ... THEN` guarding `modifications`; `None` when unconditional.
    pub condition: Option<Vec<TransactionCondition>>,
    /// Only `Insert`, `Update` and `Delete`.
    pub modifications: Vec<Statement>,
}

/// Server-side `DESCRIBE` (cqlsh 6 sends it to the server).
#[derive(Debug, Clone, PartialEq)]
pub enum Describe {
    Cluster,
    Keyspaces,
    Keyspace(Option<String>),
    Tables,
    Table(QualifiedName),
    Types,
    Type(QualifiedName),
    Functions,
    Aggregates,
    Schema {
        full: bool,
    },
    /// `DESCRIBE name`: a keyspace or a table.
    Name(QualifiedName),
}
