//! Which served model takes an image, decided from its authenticated
//! header alone (before any pixel work): the device's model hint when it
//! gives one, else the first model, in the configured order, whose card
//! accepts the image's modality, pixel format and, when the header names
//! them (format versions 3 and 4), body part and view position. An image no model
//! accepts gets no class: the receiver answers "not classified: no model"
//! with what was missing ("no model for MR/SHOULDER"), which frees the
//! gateway's spool entry and tells the device, and nobody is notified.
//!
//! An image that names no body part or view is routed by modality and
//! format alone; the model's out-of-distribution gate then looks at what
//! it shows.

use std::borrow::Borrow;

use medgate_shared::header::{Anatomy, Header, Modality};
use medgate_shared::pixels::PixelFormat;

use super::ModelCard;

/// What routing reads of an image.
#[derive(Debug, Clone, Copy)]
pub struct Query<'a> {
    /// Its modality.
    pub modality: Modality,
    /// Its pixel format.
    pub format: PixelFormat,
    /// Body part and view, as far as the device knew.
    pub anatomy: &'a Anatomy,
    /// The device's model hint.
    pub hint: Option<&'a str>,
}

impl<'a> Query<'a> {
    /// What `header` says.
    pub fn of(header: &'a Header) -> Self {
        Self {
            modality: header.meta.modality,
            format: header.pixel_format,
            anatomy: &header.meta.anatomy,
            hint: header.meta.model_hint.as_ref().map(|h| h.as_str()),
        }
    }

    /// The image as a not-classified detail names it: modality, body part,
    /// view (`DX`, `MR/SHOULDER`, `DX/CHEST LL`).
    fn describe(&self) -> String {
        let mut what = self.modality.code().to_owned();
        if let Some(part) = &self.anatomy.body_part {
            what.push('/');
            what.push_str(part.as_str());
        }
        if let Some(view) = &self.anatomy.view_position {
            what.push(' ');
            what.push_str(view.as_str());
        }
        what
    }
}

/// Whether `value` is among `listed`, case-insensitively; an empty list
/// takes anything, and so does an image that names no value.
fn listed(listed: &[String], value: Option<&str>) -> bool {
    match value {
        None => true,
        Some(value) => listed.is_empty() || listed.iter().any(|l| l.eq_ignore_ascii_case(value)),
    }
}

/// Whether `card` takes the image, its pixel format aside.
fn takes_kind(card: &ModelCard, query: &Query<'_>) -> bool {
    let accepts = &card.accepts;
    accepts
        .modalities
        .iter()
        .any(|m| m.eq_ignore_ascii_case(query.modality.code()))
        && listed(
            &accepts.body_parts,
            query.anatomy.body_part.as_ref().map(|b| b.as_str()),
        )
        && listed(
            &accepts.view_positions,
            query.anatomy.view_position.as_ref().map(|v| v.as_str()),
        )
}

fn takes(card: &ModelCard, query: &Query<'_>) -> bool {
    takes_kind(card, query) && card.accepts.pixel_formats.contains(&query.format)
}

/// The index of the model (in `cards`) that takes `header`'s image, or
/// what the device is told when none does, e.g. "no model for MR".
///
/// # Errors
/// The reason, as a sentence for the not-classified answer's detail.
pub fn choose<C: Borrow<ModelCard>>(cards: &[C], header: &Header) -> Result<usize, String> {
    choose_for(cards, &Query::of(header))
}

/// [`choose`] from the parts of a header it reads (for `classify`, which
/// has files, not headers).
///
/// # Errors
/// The reason, as a sentence for the not-classified answer's detail.
pub fn choose_for<C: Borrow<ModelCard>>(cards: &[C], query: &Query<'_>) -> Result<usize, String> {
    let format = query.format;
    if let Some(hint) = query.hint {
        let named = |card: &&ModelCard| {
            card.version == hint || card.accepts.hints.iter().any(|h| h == hint)
        };
        let Some(index) = cards.iter().position(|c| named(&c.borrow())) else {
            return Err(format!("no model named {hint:?}"));
        };
        return if takes(cards[index].borrow(), query) {
            Ok(index)
        } else {
            Err(format!(
                "model {hint:?} does not take {} {format:?} images",
                query.describe()
            ))
        };
    }
    if let Some(index) = cards.iter().position(|c| takes(c.borrow(), query)) {
        return Ok(index);
    }
    if cards.iter().any(|c| takes_kind(c.borrow(), query)) {
        Err(format!(
            "no model for {} {format:?} images",
            query.describe()
        ))
    } else {
        Err(format!("no model for {}", query.describe()))
    }
}

#[cfg(test)]
mod tests {
    use medgate_shared::header::{Anatomy, ImageMeta, Modality};
    use medgate_shared::ids::{KeyId, MessageId, RecipientId, SignerId};
    use medgate_shared::pixels::PixelFormat;

    use super::*;
    use crate::model::{Accepts, LoadedModel};

    fn header(modality: Modality, format: PixelFormat, hint: Option<&str>) -> Header {
        shown(modality, format, hint, None, None)
    }

    fn shown(
        modality: Modality,
        format: PixelFormat,
        hint: Option<&str>,
        body_part: Option<&str>,
        view: Option<&str>,
    ) -> Header {
        Header {
            meta: ImageMeta {
                message_id: MessageId([1; 16]),
                site: "site-a".parse().unwrap(),
                gateway: "gw-1".parse().unwrap(),
                device: "dev-1".parse().unwrap(),
                epoch: 1,
                sequence: 1,
                captured_at_ms: 0,
                modality,
                model_hint: hint.map(|h| h.parse().unwrap()),
                anatomy: Anatomy {
                    body_part: body_part.map(|b| b.parse().unwrap()),
                    view_position: view.map(|v| v.parse().unwrap()),
                },
            },
            width: 64,
            height: 64,
            pixel_format: format,
            recipient: RecipientId([0; 16]),
            key_id: KeyId([0; 16]),
            signer: SignerId([0; 16]),
        }
    }

    fn cards() -> Vec<ModelCard> {
        let chest = LoadedModel::card(None).unwrap();
        let mut knee = chest.clone();
        knee.version = "knee-ct-1".into();
        knee.accepts = Accepts {
            modalities: vec!["CT".into()],
            pixel_formats: vec![PixelFormat::Gray16],
            hints: vec!["knee".into()],
            body_parts: vec!["KNEE".into()],
            view_positions: Vec::new(),
        };
        vec![chest, knee]
    }

    #[test]
    fn each_image_goes_to_the_model_that_takes_its_modality_and_format() {
        let cards = cards();
        let gray8 = PixelFormat::Gray8;
        let gray16 = PixelFormat::Gray16;
        assert_eq!(choose(&cards, &header(Modality::Dx, gray16, None)), Ok(0));
        assert_eq!(choose(&cards, &header(Modality::Cr, gray8, None)), Ok(0));
        assert_eq!(choose(&cards, &header(Modality::Ct, gray16, None)), Ok(1));
        assert_eq!(
            choose(&cards, &header(Modality::Mr, gray16, None)),
            Err("no model for MR".into())
        );
        assert_eq!(
            choose(&cards, &header(Modality::Ct, gray8, None)),
            Err("no model for CT Gray8 images".into())
        );
        // Hot-folder files default to secondary capture: not a radiograph
        // until the folder's config says so.
        assert_eq!(
            choose(&cards[..1], &header(Modality::Sc, gray8, None)),
            Err("no model for SC".into())
        );
    }

    #[test]
    fn a_model_hint_picks_its_model_or_says_why_not() {
        let cards = cards();
        let gray16 = PixelFormat::Gray16;
        assert_eq!(
            choose(&cards, &header(Modality::Ct, gray16, Some("knee"))),
            Ok(1)
        );
        let version = cards[0].version.clone();
        assert_eq!(
            choose(&cards, &header(Modality::Dx, gray16, Some(&version))),
            Ok(0)
        );
        assert_eq!(
            choose(&cards, &header(Modality::Dx, gray16, Some("chest-xray"))),
            Ok(0)
        );
        assert_eq!(
            choose(&cards, &header(Modality::Dx, gray16, Some("knee"))),
            Err("model \"knee\" does not take DX Gray16 images".into())
        );
        assert_eq!(
            choose(&cards, &header(Modality::Dx, gray16, Some("brain"))),
            Err("no model named \"brain\"".into())
        );
    }

    #[test]
    fn a_body_part_or_view_the_model_was_not_made_for_is_no_models() {
        let cards = cards();
        let gray8 = PixelFormat::Gray8;
        let at = |modality, part, view| choose(&cards, &shown(modality, gray8, None, part, view));
        assert_eq!(at(Modality::Dx, Some("CHEST"), Some("PA")), Ok(0));
        assert_eq!(at(Modality::Cr, Some("chest"), Some("ap")), Ok(0));
        assert_eq!(at(Modality::Dx, Some("CHEST"), None), Ok(0));
        assert_eq!(at(Modality::Dx, None, Some("AP")), Ok(0));
        assert_eq!(
            at(Modality::Dx, Some("SHOULDER"), None),
            Err("no model for DX/SHOULDER".into())
        );
        assert_eq!(
            at(Modality::Dx, Some("CHEST"), Some("LL")),
            Err("no model for DX/CHEST LL".into())
        );
        assert_eq!(
            at(Modality::Mr, Some("SHOULDER"), None),
            Err("no model for MR/SHOULDER".into())
        );
        assert_eq!(
            at(Modality::Ct, Some("KNEE"), None),
            Err("no model for CT/KNEE Gray8 images".into())
        );
        // A hint does not override what the card accepts.
        assert_eq!(
            choose(
                &cards,
                &shown(Modality::Dx, gray8, Some("chest-xray"), Some("HAND"), None)
            ),
            Err("model \"chest-xray\" does not take DX/HAND Gray8 images".into())
        );
    }
}
