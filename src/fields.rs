//! The one table of an entry's fields: each field's name in the JavaScript API, the column the default
//! table gives it, and the kind of value it holds. What lists the fields (the statements, binary COPY
//! rows, the `columns` option and its errors) iterates [`Field::ALL`] instead of spelling them again.

use crate::entry::TextField;

/// A field of an audit entry, in the order statements list their columns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Field {
    Id,
    OccurredAt,
    TenantId,
    Actor,
    Action,
    Resource,
    Outcome,
    Payload,
}

/// What a field holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A UUID (`uuid`).
    Uuid,
    /// A point in time (`timestamptz`).
    Timestamp,
    /// Text; the action is required, the others optional (`text`).
    Text,
    /// JSON text (`jsonb`).
    Json,
}

struct Spec {
    js_name: &'static str,
    default_column: &'static str,
    kind: Kind,
}

/// By [`Field`]'s discriminant.
const SPECS: [Spec; 8] = [
    Spec {
        js_name: "id",
        default_column: "id",
        kind: Kind::Uuid,
    },
    Spec {
        js_name: "occurredAt",
        default_column: "occurred_at",
        kind: Kind::Timestamp,
    },
    Spec {
        js_name: "tenantId",
        default_column: "tenant_id",
        kind: Kind::Text,
    },
    Spec {
        js_name: "actor",
        default_column: "actor",
        kind: Kind::Text,
    },
    Spec {
        js_name: "action",
        default_column: "action",
        kind: Kind::Text,
    },
    Spec {
        js_name: "resource",
        default_column: "resource",
        kind: Kind::Text,
    },
    Spec {
        js_name: "outcome",
        default_column: "outcome",
        kind: Kind::Text,
    },
    Spec {
        js_name: "payload",
        default_column: "payload",
        kind: Kind::Json,
    },
];

impl Field {
    /// Every field, in statement order.
    pub const ALL: [Field; 8] = [
        Field::Id,
        Field::OccurredAt,
        Field::TenantId,
        Field::Actor,
        Field::Action,
        Field::Resource,
        Field::Outcome,
        Field::Payload,
    ];

    fn spec(self) -> &'static Spec {
        &SPECS[self as usize]
    }

    /// The field's name in the JavaScript API (entries, the `columns` option, error messages).
    pub fn js_name(self) -> &'static str {
        self.spec().js_name
    }

    /// The column the default table stores it in.
    pub fn default_column(self) -> &'static str {
        self.spec().default_column
    }

    /// What it holds.
    pub fn kind(self) -> Kind {
        self.spec().kind
    }

    /// The field with this JavaScript name.
    pub fn from_js_name(name: &str) -> Option<Field> {
        Field::ALL.into_iter().find(|f| f.js_name() == name)
    }

    /// The optional text field this is, if it is one.
    pub fn text(self) -> Option<TextField> {
        TextField::ALL.into_iter().find(|t| t.field() == self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_in_discriminant_order_and_names_are_unique() {
        for (i, f) in Field::ALL.into_iter().enumerate() {
            assert_eq!(f as usize, i);
            assert_eq!(Field::from_js_name(f.js_name()), Some(f));
        }
        let texts: Vec<_> = Field::ALL.into_iter().filter_map(Field::text).collect();
        assert_eq!(texts, TextField::ALL.to_vec());
    }
}
