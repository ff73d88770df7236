// Parses Mermaid diagrams with Mermaid's own parser (as GitHub renders them) and prints, per diagram, one
// JSON line: {ok, type, error} and for xychart its axes and the length of every line.
// Usage: node mermaid-check.mjs FILE...   (each FILE holds one diagram, without the ``` fence)
import { JSDOM } from 'jsdom';
import fs from 'fs';

const dom = new JSDOM('<!DOCTYPE html><body></body>');
globalThis.window = dom.window;
globalThis.document = dom.window.document;
globalThis.DOMParser = dom.window.DOMParser;
const mermaid = (await import('mermaid')).default;
mermaid.initialize({ startOnLoad: false });

for (const file of process.argv.slice(2)) {
  const text = fs.readFileSync(file, 'utf8');
  const out = { file };
  try {
    const parsed = await mermaid.parse(text);
    out.ok = true;
    out.type = parsed.diagramType;
    if (parsed.diagramType === 'xychart') {
      const { db } = await mermaid.mermaidAPI.getDiagramFromText(text);
      const data = db.getXYChartData();
      out.xAxis = data.xAxis;
      out.yAxis = data.yAxis;
      out.lines = data.plots.filter((p) => p.type === 'line').map((p) => p.data.length);
      out.palette = db.getChartThemeConfig().plotColorPalette;
    }
  } catch (e) {
    out.ok = false;
    out.error = String(e && e.message ? e.message : e);
  }
  console.log(JSON.stringify(out));
}
