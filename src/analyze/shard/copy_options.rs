//! COPY options as neutral values ([`crate::copy_format::CopyFormat`]): what splitting COPY rows
//! by key needs to know of the format.

/// The format of a COPY TO: (CSV HEADER, binary). Binary output is joined whole, so it needs
/// none of what splitting rows needs.
pub(super) fn copy_out_format(
    options: &[sqlparser::ast::CopyOption],
    legacy: &[sqlparser::ast::CopyLegacyOption],
) -> Result<(bool, bool), String> {
    use sqlparser::ast::{CopyLegacyOption as O, CopyOption as C};
    if options
        .iter()
        .any(|o| matches!(o, C::Format(f) if f.value.eq_ignore_ascii_case("binary")))
        || legacy.iter().any(|o| matches!(o, O::Binary))
    {
        return Ok((false, true));
    }
    copy_format(options, legacy).map(|f| (f.header, false))
}

pub(super) fn copy_format(
    options: &[sqlparser::ast::CopyOption],
    legacy: &[sqlparser::ast::CopyLegacyOption],
) -> Result<crate::copy_format::CopyFormat, String> {
    use crate::copy_format::CopyFormat;
    use sqlparser::ast::{CopyLegacyCsvOption as L, CopyLegacyOption as O, CopyOption as C};
    let csv = options
        .iter()
        .any(|o| matches!(o, C::Format(f) if f.value.eq_ignore_ascii_case("csv")))
        || legacy.iter().any(|o| matches!(o, O::Csv(_)));
    if options
        .iter()
        .any(|o| matches!(o, C::Format(f) if f.value.eq_ignore_ascii_case("binary")))
        || legacy.iter().any(|o| matches!(o, O::Binary))
    {
        return Err("the binary format cannot be split by key; use text or CSV".into());
    }
    let byte = |c: char| -> Result<u8, String> {
        u8::try_from(c)
            .ok()
            .filter(u8::is_ascii)
            .ok_or_else(|| format!("the character {c:?} is not supported"))
    };
    let mut f = CopyFormat::new(csv);
    for o in options {
        match o {
            C::Delimiter(c) => f.delimiter = byte(*c)?,
            C::Quote(c) => {
                f.quote = byte(*c)?;
                f.escape = f.quote;
            }
            C::Escape(c) => f.escape = byte(*c)?,
            C::Header(h) => f.header = *h,
            C::Null(n) => f.null = n.as_bytes().to_vec(),
            _ => {}
        }
    }
    for o in legacy {
        match o {
            O::Delimiter(c) => f.delimiter = byte(*c)?,
            O::Null(n) => f.null = n.as_bytes().to_vec(),
            O::Header => f.header = true,
            O::Csv(opts) => {
                for c in opts {
                    match c {
                        L::Header => f.header = true,
                        L::Quote(q) => f.quote = byte(*q)?,
                        L::Escape(e) => f.escape = byte(*e)?,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    if f.csv && f.escape != f.quote {
        return Err("CSV with an ESCAPE other than the QUOTE character is not supported".into());
    }
    Ok(f)
}
