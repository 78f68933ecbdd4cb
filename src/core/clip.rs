//! Clipping client text for messages: an error or a log line may echo a model name, a prompt
//! name or a content type, at most [`MAX_CLIPPED`] characters of it, escaped.

/// Longest piece of client text (a model name, a content type) an error message echoes.
pub(crate) const MAX_CLIPPED: usize = 64;

/// At most [`MAX_CLIPPED`] characters of client text for an error message, with control and
/// bidirectional-formatting characters escaped: an echoed name can neither flood a response or
/// a log nor reorder what a reader sees.
pub(crate) fn clip(text: &str) -> String {
    clip_to(text, MAX_CLIPPED)
}

/// [`clip`] with another length.
pub(crate) fn clip_to(text: &str, max_chars: usize) -> String {
    let mut out = String::new();
    for (i, c) in text.chars().enumerate() {
        if i == max_chars {
            out.push('…');
            break;
        }
        let bidi = matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
        if c.is_control() || bidi {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
}
