//! What a pushed database may hold: the tables a policy's `schemas:` section allows, each with its columns in order
//! (name, declared type, primary key). Parsed from the policy; compared against a replica by `catalog::verify`.
//!
//! ```yaml
//! schemas:
//!   genomes.sqlite:
//!     genomes: [id TEXT PRIMARY KEY, data BLOB]
//!     metadata: [key TEXT PRIMARY KEY, value TEXT]
//! ```

use crate::names::is_plain_segment;
use std::collections::BTreeMap;

/// One column as a policy declares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnSpec {
    pub name: String,
    /// As declared (`TEXT`, `BLOB`, `INTEGER`, …; empty for none), compared without regard to case.
    pub declared_type: String,
    pub primary_key: bool,
}

/// One table a database may hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSpec {
    pub name: String,
    pub columns: Vec<ColumnSpec>,
}

/// The tables of each database, by database file name.
pub type Schemas = BTreeMap<String, Vec<TableSpec>>;

/// The schema of the workers' databases: `TABLE(id TEXT PRIMARY KEY, data BLOB)` and the metadata table.
pub fn default_tables(database: &str) -> Option<Vec<TableSpec>> {
    let table = match database {
        "genomes.sqlite" => "genomes",
        "features.sqlite" => "features",
        _ => return None,
    };
    let spec = |name: &str, columns: &[&str]| TableSpec {
        name: name.to_owned(),
        columns: columns.iter().map(|c| parse_column(c).expect("the default columns parse")).collect(),
    };
    Some(vec![
        spec(table, &["id TEXT PRIMARY KEY", "data BLOB"]),
        spec("metadata", &["key TEXT PRIMARY KEY", "value TEXT"]),
    ])
}

/// `NAME [TYPE] [PRIMARY KEY]`, the type one word of letters (SQLite's declared types as the workers write them).
pub fn parse_column(text: &str) -> Result<ColumnSpec, String> {
    let words: Vec<&str> = text.split_whitespace().collect();
    let (primary_key, words) = match words.as_slice() {
        [rest @ .., primary, key] if primary.eq_ignore_ascii_case("primary") && key.eq_ignore_ascii_case("key") => {
            (true, rest)
        }
        all => (false, all),
    };
    let (name, declared_type) = match words {
        [name] => (*name, ""),
        [name, declared_type] => (*name, *declared_type),
        _ => return Err(format!("'{text}' is not a column: write NAME TYPE, optionally followed by PRIMARY KEY")),
    };
    if !is_identifier(name) {
        return Err(format!("'{name}' is not a column name ([A-Za-z_][A-Za-z0-9_]*)"));
    }
    if !declared_type.bytes().all(|b| b.is_ascii_alphabetic()) {
        return Err(format!("'{declared_type}' is not a column type (one word of letters, e.g. TEXT, BLOB, INTEGER)"));
    }
    Ok(ColumnSpec { name: name.to_owned(), declared_type: declared_type.to_ascii_uppercase(), primary_key })
}

/// Builds the schemas of a policy's databases: what the policy writes, else the default, for each one.
pub fn schemas_for(
    databases: &[String],
    written: BTreeMap<String, BTreeMap<String, Vec<String>>>,
) -> Result<Schemas, String> {
    let mut schemas = Schemas::new();
    for (database, tables) in &written {
        if !databases.contains(database) {
            return Err(format!("schemas: '{database}' is not one of the policy's databases"));
        }
        if tables.is_empty() {
            return Err(format!("schemas: '{database}' lists no table"));
        }
        let mut specs = Vec::new();
        for (table, columns) in tables {
            if !is_identifier(table) || table.to_ascii_lowercase().starts_with("sqlite_") {
                return Err(format!("schemas: '{table}' in '{database}' is not a table name a database may hold"));
            }
            if columns.is_empty() {
                return Err(format!("schemas: table '{table}' in '{database}' has no column"));
            }
            let columns = columns
                .iter()
                .map(|c| parse_column(c).map_err(|e| format!("schemas: table '{table}' in '{database}': {e}")))
                .collect::<Result<Vec<_>, _>>()?;
            specs.push(TableSpec { name: table.clone(), columns });
        }
        schemas.insert(database.clone(), specs);
    }
    for database in databases {
        if schemas.contains_key(database) {
            continue;
        }
        let tables = default_tables(database).ok_or_else(|| {
            format!("schemas: '{database}' has no default schema; write its tables under schemas: {database}:")
        })?;
        schemas.insert(database.clone(), tables);
    }
    Ok(schemas)
}

fn is_identifier(name: &str) -> bool {
    is_plain_segment(name)
        && name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_parse_as_the_workers_write_them() {
        assert_eq!(
            parse_column("id TEXT PRIMARY KEY").unwrap(),
            ColumnSpec { name: "id".into(), declared_type: "TEXT".into(), primary_key: true }
        );
        assert_eq!(parse_column("data blob").unwrap().declared_type, "BLOB");
        assert_eq!(parse_column("x").unwrap().declared_type, "");
        for bad in ["", "1x TEXT", "a b c", "x TEXT(10)", "x TEXT PRIMARY", "\"x\" TEXT", "x-y TEXT"] {
            assert!(parse_column(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn defaults_fill_what_a_policy_leaves_out_and_unknown_databases_need_a_schema() {
        let databases = vec!["genomes.sqlite".to_owned(), "features.sqlite".to_owned()];
        let schemas = schemas_for(&databases, BTreeMap::new()).unwrap();
        assert_eq!(schemas["features.sqlite"][0].name, "features");
        assert_eq!(schemas["genomes.sqlite"][1].name, "metadata");
        let odd = vec!["notes.db".to_owned()];
        assert!(schemas_for(&odd, BTreeMap::new()).unwrap_err().contains("no default schema"));
        let written = BTreeMap::from([(
            "notes.db".to_owned(),
            BTreeMap::from([("notes".to_owned(), vec!["id INTEGER PRIMARY KEY".to_owned()])]),
        )]);
        assert_eq!(schemas_for(&odd, written.clone()).unwrap()["notes.db"][0].columns.len(), 1);
        assert!(schemas_for(&databases, written).unwrap_err().contains("not one of the policy's databases"));
        let system = BTreeMap::from([(
            "genomes.sqlite".to_owned(),
            BTreeMap::from([("sqlite_stat1".to_owned(), vec!["tbl TEXT".to_owned()])]),
        )]);
        assert!(schemas_for(&databases, system).is_err());
    }
}
