// Search snippets without raw LaTeX: the page text the search results quote is taken
// from the page's HTML before MathJax typesets it, so `\(\beta\)` would show as written.
// Display maths is dropped from the snippet and inline maths is written plainly.
(() => {
  const GREEK = /\\(alpha|beta|gamma|delta|epsilon|eta|theta|lambda|mu|pi|sigma|tau|phi|psi|omega|Delta|Sigma|Lambda)\b/g;
  const LETTERS = {
    alpha: "α", beta: "β", gamma: "γ", delta: "δ", epsilon: "ε", eta: "η", theta: "θ",
    lambda: "λ", mu: "μ", pi: "π", sigma: "σ", tau: "τ", phi: "φ", psi: "ψ", omega: "ω",
    Delta: "Δ", Sigma: "Σ", Lambda: "Λ",
  };
  const plain = (tex) => tex
    .replace(/^\\\(|\\\)$/g, "")
    .replace(GREEK, (_, name) => LETTERS[name])
    .replace(/\\top\b/g, "ᵀ")
    .replace(/\\[A-Za-z]+|[{}\\]/g, " ")
    .replace(/\s+/g, " ")
    .trim();
  const patch = () => {
    if (typeof Search === "undefined" || Search.fwplabPlainMaths) return;
    const htmlToText = Search.htmlToText;
    Search.htmlToText = (htmlString, anchor) => {
      const page = new DOMParser().parseFromString(htmlString, "text/html");
      page.querySelectorAll("div.math").forEach((block) => block.remove());
      page.querySelectorAll("span.math").forEach((span) => {
        span.textContent = plain(span.textContent);
      });
      return htmlToText(page.documentElement.outerHTML, anchor);
    };
    Search.fwplabPlainMaths = true;
  };
  patch();
  document.addEventListener("DOMContentLoaded", patch);
})();
