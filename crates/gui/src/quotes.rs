//! The quotes the generation overlay shows, one every few seconds: fifty short lines about art,
//! each with its author and, where it is known, the work or letter it comes from.

/// A quote and who said or wrote it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quote {
    pub text: &'static str,
    pub author: &'static str,
    /// The work, letter or interview it comes from, where known.
    pub source: Option<&'static str>,
}

const fn q(text: &'static str, author: &'static str, source: Option<&'static str>) -> Quote {
    Quote {
        text,
        author,
        source,
    }
}

pub const QUOTES: [Quote; 50] = [
    q("Art is a lie that makes us realize truth.", "Pablo Picasso", Some("interview with Marius de Zayas, 1923")),
    q("The artist is a receptacle for emotions that come from all over the place.", "Pablo Picasso", Some("conversation with Christian Zervos, 1935")),
    q("Art does not reproduce the visible; rather, it makes visible.", "Paul Klee", Some("Creative Confession, 1920")),
    q("Color has taken possession of me; no longer do I have to chase after it.", "Paul Klee", Some("diary, Tunisia, 1914")),
    q("Great things are not done by impulse, but by a series of small things brought together.", "Vincent van Gogh", Some("letter to Theo, 1882")),
    q("If you hear a voice within you say 'you cannot paint,' then by all means paint, and that voice will be silenced.", "Vincent van Gogh", Some("letter to Theo, 1883")),
    q("I am seeking. I am striving. I am in it with all my heart.", "Vincent van Gogh", Some("letter to Theo, 1882")),
    q("Color is my day-long obsession, joy and torment.", "Claude Monet", None),
    q("Art is a harmony parallel with nature.", "Paul Cézanne", Some("letter to Joachim Gasquet, 1897")),
    q("Painting from nature is not copying the object; it is realizing one's sensations.", "Paul Cézanne", Some("as recorded by Émile Bernard")),
    q("What I dream of is an art of balance, of purity and serenity.", "Henri Matisse", Some("Notes of a Painter, 1908")),
    q("Exactitude is not truth.", "Henri Matisse", Some("essay title, 1947")),
    q("Color is a power which directly influences the soul.", "Wassily Kandinsky", Some("Concerning the Spiritual in Art, 1911")),
    q("Color is the keyboard, the eyes are the hammers, the soul is the piano with many strings.", "Wassily Kandinsky", Some("Concerning the Spiritual in Art, 1911")),
    q("Painting is poetry that is seen rather than felt, and poetry is painting that is felt rather than seen.", "Leonardo da Vinci", Some("notebooks")),
    q("Life imitates Art far more than Art imitates Life.", "Oscar Wilde", Some("The Decay of Lying, 1889")),
    q("No great artist ever sees things as they really are. If he did, he would cease to be an artist.", "Oscar Wilde", Some("The Decay of Lying, 1889")),
    q("All art is quite useless.", "Oscar Wilde", Some("preface to The Picture of Dorian Gray, 1891")),
    q("Art is the most intense mode of individualism that the world has known.", "Oscar Wilde", Some("The Soul of Man under Socialism, 1891")),
    q("Art enables us to find ourselves and lose ourselves at the same time.", "Thomas Merton", Some("No Man Is an Island, 1955")),
    q("Art is the stored honey of the human soul.", "Theodore Dreiser", Some("Life, Art and America, 1917")),
    q("We possess art lest we perish of the truth.", "Friedrich Nietzsche", Some("notebooks, published as The Will to Power")),
    q("I found I could say things with color and shapes that I couldn't say any other way — things I had no words for.", "Georgia O'Keeffe", None),
    q("Nobody sees a flower, really; it is so small. We haven't time, and to see takes time.", "Georgia O'Keeffe", Some("exhibition catalogue, 1939")),
    q("Have no fear of perfection — you'll never reach it.", "Salvador Dalí", Some("50 Secrets of Magic Craftsmanship, 1948")),
    q("Art is the only way to run away without leaving home.", "Twyla Tharp", Some("The Creative Habit, 2003")),
    q("Creativity is allowing yourself to make mistakes. Art is knowing which ones to keep.", "Scott Adams", Some("The Dilbert Principle, 1996")),
    q("The job of the artist is always to deepen the mystery.", "Francis Bacon", None),
    q("The painting has a life of its own. I try to let it come through.", "Jackson Pollock", Some("My Painting, 1947")),
    q("Art is not a thing; it is a way.", "Elbert Hubbard", None),
    q("In art, the hand can never execute anything higher than the heart can imagine.", "Ralph Waldo Emerson", Some("Society and Solitude, 1870")),
    q("Every artist dips his brush in his own soul, and paints his own nature into his pictures.", "Henry Ward Beecher", Some("Proverbs from Plymouth Pulpit, 1887")),
    q("To every age its art, to art its freedom.", "Ludwig Hevesi", Some("motto of the Vienna Secession building, 1898")),
    q("Art should comfort the disturbed and disturb the comfortable.", "Cesar A. Cruz", None),
    q("Art hurts. Art urges voyages — and it is easier to stay at home.", "Gwendolyn Brooks", None),
    q("An artist cannot fail; it is a success to be one.", "Charles Horton Cooley", Some("Life and the Student, 1927")),
    q("Art is the desire of a man to express himself, to record the reactions of his personality to the world he lives in.", "Amy Lowell", Some("Tendencies in Modern American Poetry, 1917")),
    q("Ars longa, vita brevis — art is long, life is short.", "Hippocrates", Some("Aphorisms")),
    q("Beauty will save the world.", "Fyodor Dostoevsky", Some("The Idiot, 1869")),
    q("A poem is never finished, only abandoned.", "Paul Valéry", None),
    q("The object of art is not to reproduce reality, but to create a reality of the same intensity.", "Alberto Giacometti", None),
    q("Art is either plagiarism or revolution.", "Paul Gauguin", None),
    q("I shut my eyes in order to see.", "Paul Gauguin", None),
    q("Inspiration exists, but it has to find you working.", "Pablo Picasso", None),
    q("Every good painter paints what he is.", "Jackson Pollock", None),
    q("If I create from the heart, nearly everything works; if from the head, almost nothing.", "Marc Chagall", None),
    q("The emotions are sometimes so strong that I work without knowing it.", "Vincent van Gogh", Some("letter to Theo, 1888")),
    q("There are always flowers for those who want to see them.", "Henri Matisse", None),
    q("Art is the triumph over chaos.", "John Cheever", None),
    q("The principal person in a picture is light.", "Édouard Manet", None),
];

/// The quote to show `elapsed_secs` into a run, changing every `period_secs`. `offset` varies
/// the starting quote from run to run.
pub fn quote_at(elapsed_secs: f64, period_secs: f64, offset: usize) -> &'static Quote {
    let index = (elapsed_secs / period_secs).max(0.0) as usize + offset;
    &QUOTES[index % QUOTES.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bank_holds_fifty_distinct_attributed_quotes() {
        let mut texts: Vec<&str> = QUOTES.iter().map(|q| q.text).collect();
        texts.sort_unstable();
        texts.dedup();
        assert_eq!(texts.len(), 50);
        assert!(QUOTES.iter().all(|q| !q.author.is_empty()));
    }

    #[test]
    fn the_quote_changes_every_period() {
        assert_eq!(quote_at(0.0, 8.0, 0), quote_at(7.9, 8.0, 0));
        assert_ne!(quote_at(7.9, 8.0, 0), quote_at(8.1, 8.0, 0));
    }
}
