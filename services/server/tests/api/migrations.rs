//! Schema parity: the SQLite and PostgreSQL migration trees must build the same tables,
//! columns (name, nullability, type family), primary keys and indexes. Both trees are applied
//! to fresh databases and compared through each engine's catalog, so a migration added to one
//! tree only, or spelled differently in the other, fails here whatever table it touches.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::Write;

use meshfleet_server::db::Db;
use sqlx::{Connection, PgConnection, Row, SqliteConnection};

use crate::helpers::{postgres_url, Engine, TestDb};

/// Differences the engines cannot avoid or that we accept on purpose, each with its reason,
/// spelled exactly as `differences` reports them. An entry that no longer occurs fails the test,
/// so this list only shrinks with the drift.
const ALLOWED_DIFFERENCES: &[&str] = &[];

/// A column as both engines can describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Column {
    family: &'static str,
    not_null: bool,
}

impl fmt::Display for Column {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.family, if self.not_null { " NOT NULL" } else { " NULL" })
    }
}

/// An index: its key columns in order, uniqueness, and whether it is partial.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Index {
    columns: Vec<String>,
    unique: bool,
    partial: bool,
}

impl fmt::Display for Index {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = if self.unique { "UNIQUE " } else { "" };
        let partial = if self.partial { " WHERE ..." } else { "" };
        write!(f, "{kind}({}){partial}", self.columns.join(", "))
    }
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Table {
    columns: BTreeMap<String, Column>,
    primary_key: Vec<String>,
    /// Named indexes (CREATE INDEX) by name; indexes the engine makes for a UNIQUE constraint
    /// have engine-chosen names, so they are keyed by their columns instead.
    indexes: BTreeMap<String, Index>,
}

type Schema = BTreeMap<String, Table>;

/// The key of an index that backs a UNIQUE constraint: engines name those themselves.
fn constraint_key(columns: &[String]) -> String {
    format!("<unique constraint ({})>", columns.join(", "))
}

/// The family of an SQLite declared type, after SQLite's own affinity rules (section 3.1 of
/// its datatype page), with BOOLEAN kept apart because it means something on PostgreSQL.
fn sqlite_family(declared: &str) -> &'static str {
    let t = declared.to_ascii_uppercase();
    if t.contains("BOOL") {
        "boolean"
    } else if t.contains("INT") {
        "integer"
    } else if t.contains("CHAR") || t.contains("CLOB") || t.contains("TEXT") {
        "text"
    } else if t.contains("BLOB") || t.is_empty() {
        "blob"
    } else if t.contains("REAL") || t.contains("FLOA") || t.contains("DOUB") {
        "real"
    } else {
        "numeric"
    }
}

fn postgres_family(data_type: &str) -> &'static str {
    match data_type {
        "text" | "character varying" | "character" => "text",
        "smallint" | "integer" | "bigint" => "integer",
        "real" | "double precision" => "real",
        "bytea" => "blob",
        "boolean" => "boolean",
        "numeric" => "numeric",
        _ => "other",
    }
}

/// Tables that belong to the engine or to sqlx, not to our migrations.
fn is_ours(table: &str) -> bool {
    !table.starts_with("sqlite_") && table != "_sqlx_migrations"
}

async fn sqlite_schema(url: &str) -> Schema {
    let mut conn = SqliteConnection::connect(url).await.unwrap();
    let tables: Vec<String> = sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name").fetch_all(&mut conn).await.unwrap();
    let mut schema = Schema::new();
    for name in tables.into_iter().filter(|t| is_ours(t)) {
        let mut table = Table::default();
        let mut primary_key = Vec::new();
        for c in sqlx::query(r#"SELECT name, type, "notnull" AS not_null, pk FROM pragma_table_info($1)"#).bind(&name).fetch_all(&mut conn).await.unwrap() {
            let column: String = c.get("name");
            let pk: i64 = c.get("pk");
            // SQLite lets a non-INTEGER primary key hold NULL (a documented legacy quirk) but
            // the migrations mean "not null" there, as PostgreSQL enforces.
            let not_null = c.get::<i64, _>("not_null") != 0 || pk > 0;
            if pk > 0 {
                primary_key.push((pk, column.clone()));
            }
            table.columns.insert(column, Column { family: sqlite_family(c.get("type")), not_null });
        }
        primary_key.sort();
        table.primary_key = primary_key.into_iter().map(|(_, c)| c).collect();
        for i in
            sqlx::query(r#"SELECT name, "unique" AS is_unique, origin, partial FROM pragma_index_list($1)"#).bind(&name).fetch_all(&mut conn).await.unwrap()
        {
            let origin: String = i.get("origin");
            if origin == "pk" {
                continue; // compared as the primary key
            }
            let index_name: String = i.get("name");
            let columns: Vec<String> = sqlx::query(r#"SELECT coalesce(name, '<expression>') AS name FROM pragma_index_info($1) ORDER BY seqno"#)
                .bind(&index_name)
                .fetch_all(&mut conn)
                .await
                .unwrap()
                .iter()
                .map(|r| r.get("name"))
                .collect();
            let key = if origin == "u" { constraint_key(&columns) } else { index_name };
            table.indexes.insert(key, Index { columns, unique: i.get::<i64, _>("is_unique") != 0, partial: i.get::<i64, _>("partial") != 0 });
        }
        schema.insert(name, table);
    }
    schema
}

async fn postgres_schema(url: &str) -> Schema {
    let mut conn = PgConnection::connect(url).await.unwrap();
    let mut schema = Schema::new();
    let columns = sqlx::query(
        "SELECT c.table_name::text AS table_name, c.column_name::text AS column_name, c.data_type::text AS data_type, c.is_nullable::text AS is_nullable
         FROM information_schema.columns c
         JOIN information_schema.tables t ON t.table_schema = c.table_schema AND t.table_name = c.table_name
         WHERE c.table_schema = current_schema() AND t.table_type = 'BASE TABLE'",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    for c in columns {
        let table: String = c.get("table_name");
        if !is_ours(&table) {
            continue;
        }
        let column = Column { family: postgres_family(c.get("data_type")), not_null: c.get::<String, _>("is_nullable") == "NO" };
        schema.entry(table).or_default().columns.insert(c.get("column_name"), column);
    }
    // pg_indexes only has each index's definition as text; pg_index has its parts.
    let indexes = sqlx::query(
        "SELECT t.relname::text AS table_name, i.relname::text AS index_name,
                ix.indisprimary AS is_primary, ix.indisunique AS is_unique, ix.indpred IS NOT NULL AS is_partial,
                EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.oid AND k.contype = 'u') AS from_constraint,
                ARRAY(SELECT coalesce(a.attname::text, '<expression>')
                      FROM unnest(ix.indkey::int2[]) WITH ORDINALITY AS key(attnum, position)
                      LEFT JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = key.attnum AND key.attnum > 0
                      WHERE key.position <= ix.indnkeyatts
                      ORDER BY key.position) AS columns
         FROM pg_index ix
         JOIN pg_class i ON i.oid = ix.indexrelid
         JOIN pg_class t ON t.oid = ix.indrelid
         JOIN pg_namespace n ON n.oid = t.relnamespace
         WHERE n.nspname = current_schema()",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    for i in indexes {
        let table: String = i.get("table_name");
        if !is_ours(&table) {
            continue;
        }
        let entry = schema.entry(table).or_default();
        let columns: Vec<String> = i.get("columns");
        if i.get("is_primary") {
            entry.primary_key = columns;
            continue;
        }
        let key = if i.get("from_constraint") { constraint_key(&columns) } else { i.get("index_name") };
        entry.indexes.insert(key, Index { columns, unique: i.get("is_unique"), partial: i.get("is_partial") });
    }
    schema
}

/// Every way `postgres` differs from `sqlite`, one line each.
fn differences(sqlite: &Schema, postgres: &Schema) -> Vec<String> {
    let mut out = Vec::new();
    let names: BTreeSet<&String> = sqlite.keys().chain(postgres.keys()).collect();
    for name in names {
        let (s, p) = match (sqlite.get(name), postgres.get(name)) {
            (Some(s), Some(p)) => (s, p),
            (Some(_), None) => {
                out.push(format!("table {name}: only on SQLite"));
                continue;
            }
            (None, _) => {
                out.push(format!("table {name}: only on PostgreSQL"));
                continue;
            }
        };
        let columns: BTreeSet<&String> = s.columns.keys().chain(p.columns.keys()).collect();
        for column in columns {
            match (s.columns.get(column), p.columns.get(column)) {
                (Some(a), Some(b)) if a == b => {}
                (Some(a), Some(b)) => out.push(format!("column {name}.{column}: SQLite {a}, PostgreSQL {b}")),
                (Some(_), None) => out.push(format!("column {name}.{column}: only on SQLite")),
                (None, _) => out.push(format!("column {name}.{column}: only on PostgreSQL")),
            }
        }
        if s.primary_key != p.primary_key {
            out.push(format!("primary key of {name}: SQLite ({}), PostgreSQL ({})", s.primary_key.join(", "), p.primary_key.join(", ")));
        }
        let indexes: BTreeSet<&String> = s.indexes.keys().chain(p.indexes.keys()).collect();
        for index in indexes {
            match (s.indexes.get(index), p.indexes.get(index)) {
                (Some(a), Some(b)) if a == b => {}
                (Some(a), Some(b)) => out.push(format!("index {index} on {name}: SQLite {a}, PostgreSQL {b}")),
                (Some(a), None) => out.push(format!("index {index} on {name}: only on SQLite {a}")),
                (None, Some(b)) => out.push(format!("index {index} on {name}: only on PostgreSQL {b}")),
                (None, None) => unreachable!(),
            }
        }
    }
    out
}

/// The schema the migrations of `engine` build on a fresh database.
async fn migrated_schema(engine: Engine) -> Schema {
    let db = TestDb::new(engine).await;
    let store = Db::connect(&db.url, 1).await.unwrap();
    store.pool.close().await;
    match engine {
        Engine::Sqlite => sqlite_schema(&db.url).await,
        Engine::Postgres => postgres_schema(&db.url).await,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_and_postgres_migrations_build_the_same_schema() {
    let sqlite = migrated_schema(Engine::Sqlite).await;
    // The catalog reading itself must see the schema, or every comparison passes vacuously.
    let clusters = sqlite.get("clusters").expect("the SQLite schema has a clusters table");
    assert_eq!(clusters.primary_key, ["id"]);
    assert_eq!(clusters.indexes.get(&constraint_key(&["org_id".into(), "name".into()])).map(|i| i.unique), Some(true), "{clusters:?}");
    assert_eq!(sqlite["memberships"].indexes.get("memberships_user"), Some(&Index { columns: vec!["user_id".into()], unique: false, partial: false }));
    if postgres_url().is_none() {
        let _ = writeln!(std::io::stderr(), "\nNOTE: migration parity with PostgreSQL SKIPPED: MESHFLEET_TEST_POSTGRES_URL is not set.\n");
        return;
    }
    let postgres = migrated_schema(Engine::Postgres).await;

    let found = differences(&sqlite, &postgres);
    let unexpected: Vec<&String> = found.iter().filter(|d| !ALLOWED_DIFFERENCES.contains(&d.as_str())).collect();
    let stale: Vec<&&str> = ALLOWED_DIFFERENCES.iter().filter(|a| !found.iter().any(|d| d == *a)).collect();
    assert!(
        unexpected.is_empty(),
        "the SQLite and PostgreSQL migrations drifted apart:\n{}",
        unexpected.iter().map(|d| format!("  {d}\n")).collect::<String>()
    );
    assert!(stale.is_empty(), "allowed differences that no longer occur, remove them: {stale:?}");
}

/// The comparison reports each kind of drift (so the parity test can fail).
#[test]
fn schema_differences_are_reported() {
    let column = |family, not_null| Column { family, not_null };
    let index = |columns: &[&str], unique| Index { columns: columns.iter().map(|c| c.to_string()).collect(), unique, partial: false };
    let mut base = Table::default();
    base.columns.insert("id".into(), column("text", true));
    base.columns.insert("n".into(), column("integer", false));
    base.primary_key = vec!["id".into()];
    base.indexes.insert("t_n".into(), index(&["n"], false));
    let sqlite: Schema = [("t".to_string(), base.clone()), ("only_sqlite".to_string(), Table::default())].into();

    let mut drifted = base.clone();
    drifted.columns.insert("n".into(), column("text", true));
    drifted.columns.insert("extra".into(), column("blob", false));
    drifted.primary_key = vec!["n".into()];
    drifted.indexes.insert("t_n".into(), index(&["n", "id"], true));
    drifted.indexes.insert("t_extra".into(), index(&["extra"], false));
    let postgres: Schema = [("t".to_string(), drifted)].into();

    assert_eq!(
        differences(&sqlite, &postgres),
        [
            "table only_sqlite: only on SQLite",
            "column t.extra: only on PostgreSQL",
            "column t.n: SQLite integer NULL, PostgreSQL text NOT NULL",
            "primary key of t: SQLite (id), PostgreSQL (n)",
            "index t_extra on t: only on PostgreSQL (extra)",
            "index t_n on t: SQLite (n), PostgreSQL UNIQUE (n, id)",
        ]
    );
    assert!(differences(&sqlite, &sqlite).is_empty());
}

#[test]
fn type_families_follow_each_engines_names() {
    for (sqlite, postgres, family) in [
        ("TEXT", "text", "text"),
        ("BIGINT", "bigint", "integer"),
        ("INTEGER", "integer", "integer"),
        ("DOUBLE PRECISION", "double precision", "real"),
        ("BLOB", "bytea", "blob"),
        ("BOOLEAN", "boolean", "boolean"),
    ] {
        assert_eq!((sqlite_family(sqlite), postgres_family(postgres)), (family, family));
    }
}
