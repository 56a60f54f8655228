using System.Globalization;

namespace Axolotl.Templates.Jinja;

/// <summary>
/// Builds the syntax tree with the renderer's grammar and precedence (lowest first): inline if/else, or, and, not,
/// comparisons and membership, + - ~, * / // %, **, tests (is), filters (|), unary signs, calls and member access.
/// </summary>
sealed class Parser
{
    readonly List<Token> _tokens;
    readonly int _endPos;
    int _current;

    Parser(List<Token> tokens, int endPos) { _tokens = tokens; _endPos = endPos; }

    public static ProgramNode Parse(string source)
    {
        var parser = new Parser(Lexer.Tokenize(source), source.Length);
        var body = new List<Node>();
        while (parser._current < parser._tokens.Count) body.Add(parser.ParseAny());
        return new ProgramNode(body) { Pos = 0 };
    }

    Token? Peek(int offset = 0) => _current + offset < _tokens.Count ? _tokens[_current + offset] : null;
    int PosHere => Peek()?.Pos ?? _endPos;

    TemplateSyntaxError Error(string message, int? pos = null) => new(message, pos ?? PosHere);

    Token Current => Peek() ?? throw Error("Unexpected end of template");

    Token Expect(Tok type, string error)
    {
        var prev = Peek() ?? throw Error($"{error}, but the template ended");
        _current++;
        if (prev.Type != type) throw Error($"{error}. {prev.Type} !== {type}.", prev.Pos);
        return prev;
    }

    void ExpectIdentifier(string name)
    {
        if (!IsIdentifier(name)) throw Error($"Expected {name}");
        ++_current;
    }

    bool Is(params Tok[] types)
    {
        if (_current + types.Length > _tokens.Count) return false;
        for (int i = 0; i < types.Length; i++) if (_tokens[_current + i].Type != types[i]) return false;
        return true;
    }

    bool IsStatement(params string[] names) =>
        Peek()?.Type == Tok.OpenStatement && Peek(1) is { Type: Tok.Identifier } id && names.Contains(id.Value);

    bool IsIdentifier(params string[] names)
    {
        if (_current + names.Length > _tokens.Count) return false;
        for (int i = 0; i < names.Length; i++)
            if (_tokens[_current + i].Type != Tok.Identifier || _tokens[_current + i].Value != names[i]) return false;
        return true;
    }

    // Statement bodies run until one of the given closing tags; the end of the template there is an error.
    List<Node> ParseUntil(string what, params string[] names)
    {
        var body = new List<Node>();
        while (!IsStatement(names))
        {
            if (Peek() is null) throw Error($"Unexpected end of template: expected {what}");
            body.Add(ParseAny());
        }
        return body;
    }

    Node ParseAny()
    {
        if (!System.Runtime.CompilerServices.RuntimeHelpers.TryEnsureSufficientExecutionStack())
            throw Error("Statements nested too deeply");
        var token = Current;
        switch (token.Type)
        {
            case Tok.Comment: _current++; return new CommentNode { Pos = token.Pos };
            case Tok.Text: _current++; return new StrLiteral(token.Value) { Pos = token.Pos };
            case Tok.OpenStatement: return ParseJinjaStatement();
            case Tok.OpenExpression: return ParseJinjaExpression();
            default: throw Error($"Unexpected token type: {token.Type}");
        }
    }

    Node ParseJinjaStatement()
    {
        var open = Expect(Tok.OpenStatement, "Expected opening statement token");
        var nameToken = Current;
        if (nameToken.Type != Tok.Identifier) throw Error($"Unknown statement, got {nameToken.Type}");
        int pos = open.Pos;
        Node result;
        switch (nameToken.Value)
        {
            case "set":
                ++_current;
                result = ParseSetStatement(pos);
                break;
            case "if":
                ++_current;
                result = ParseIfStatement(pos);
                Expect(Tok.OpenStatement, "Expected {% token");
                ExpectIdentifier("endif");
                Expect(Tok.CloseStatement, "Expected %} token");
                break;
            case "macro":
                ++_current;
                result = ParseMacroStatement(pos);
                Expect(Tok.OpenStatement, "Expected {% token");
                ExpectIdentifier("endmacro");
                Expect(Tok.CloseStatement, "Expected %} token");
                break;
            case "for":
                ++_current;
                result = ParseForStatement(pos);
                Expect(Tok.OpenStatement, "Expected {% token");
                ExpectIdentifier("endfor");
                Expect(Tok.CloseStatement, "Expected %} token");
                break;
            case "call":
            {
                ++_current;
                List<Node>? callerArgs = null;
                if (Is(Tok.OpenParen)) callerArgs = ParseArgs(parameters: true);
                var callee = ParsePrimaryExpression();
                if (callee is not Identifier) throw Error("Expected identifier following call statement", callee.Pos);
                var callArgs = ParseArgs(parameters: false);
                Expect(Tok.CloseStatement, "Expected closing statement token");
                var body = ParseUntil("{% endcall %}", "endcall");
                Expect(Tok.OpenStatement, "Expected '{%'");
                ExpectIdentifier("endcall");
                Expect(Tok.CloseStatement, "Expected closing statement token");
                result = new CallStatement(new CallExpr(callee, callArgs) { Pos = callee.Pos }, callerArgs, body) { Pos = pos };
                break;
            }
            case "break":
                ++_current;
                Expect(Tok.CloseStatement, "Expected closing statement token");
                result = new BreakNode { Pos = pos };
                break;
            case "continue":
                ++_current;
                Expect(Tok.CloseStatement, "Expected closing statement token");
                result = new ContinueNode { Pos = pos };
                break;
            case "filter":
            {
                ++_current;
                var filterNode = ParsePrimaryExpression();
                if (filterNode is Identifier && Is(Tok.OpenParen)) filterNode = ParseCallExpression(filterNode);
                Expect(Tok.CloseStatement, "Expected closing statement token");
                var body = ParseUntil("{% endfilter %}", "endfilter");
                Expect(Tok.OpenStatement, "Expected '{%'");
                ExpectIdentifier("endfilter");
                Expect(Tok.CloseStatement, "Expected '%}'");
                result = new FilterStatement(filterNode, body) { Pos = pos };
                break;
            }
            default:
                throw Error($"Unknown statement type: {nameToken.Value}", nameToken.Pos);
        }
        return result;
    }

    Node ParseJinjaExpression()
    {
        Expect(Tok.OpenExpression, "Expected opening expression token");
        var result = ParseExpression();
        Expect(Tok.CloseExpression, "Expected closing expression token");
        return result;
    }

    Node ParseSetStatement(int pos)
    {
        var left = ParseExpressionSequence();
        Node? value = null;
        var body = new List<Node>();
        if (Is(Tok.Equals))
        {
            ++_current;
            value = ParseExpressionSequence();
        }
        else
        {
            Expect(Tok.CloseStatement, "Expected %} token");
            body = ParseUntil("{% endset %}", "endset");
            Expect(Tok.OpenStatement, "Expected {% token");
            ExpectIdentifier("endset");
        }
        Expect(Tok.CloseStatement, "Expected closing statement token");
        return new SetNode(left, value, body) { Pos = pos };
    }

    IfNode ParseIfStatement(int pos)
    {
        var test = ParseExpression();
        Expect(Tok.CloseStatement, "Expected closing statement token");
        var body = ParseUntil("{% endif %}", "elif", "else", "endif");
        var alternate = new List<Node>();
        if (IsStatement("elif"))
        {
            int elifPos = Current.Pos;
            _current += 2;
            alternate.Add(ParseIfStatement(elifPos));
        }
        else if (IsStatement("else"))
        {
            _current += 2;
            Expect(Tok.CloseStatement, "Expected closing statement token");
            alternate = ParseUntil("{% endif %}", "endif");
        }
        return new IfNode(test, body, alternate) { Pos = pos };
    }

    MacroNode ParseMacroStatement(int pos)
    {
        var name = ParsePrimaryExpression();
        if (name is not Identifier id) throw Error("Expected identifier following macro statement", name.Pos);
        var args = ParseArgs(parameters: true);
        Expect(Tok.CloseStatement, "Expected closing statement token");
        var body = ParseUntil("{% endmacro %}", "endmacro");
        return new MacroNode(id, args, body) { Pos = pos };
    }

    Node ParseExpressionSequence(bool primary = false)
    {
        int pos = PosHere;
        var expressions = new List<Node> { primary ? ParsePrimaryExpression() : ParseExpression() };
        bool isTuple = Is(Tok.Comma);
        while (isTuple)
        {
            ++_current;
            expressions.Add(primary ? ParsePrimaryExpression() : ParseExpression());
            if (!Is(Tok.Comma)) break;
        }
        return isTuple ? new TupleLiteral(expressions) { Pos = pos } : expressions[0];
    }

    ForNode ParseForStatement(int pos)
    {
        var loopVariable = ParseExpressionSequence(primary: true);
        if (loopVariable is not (Identifier or TupleLiteral))
            throw Error($"Expected identifier/tuple for the loop variable, got {loopVariable.GetType().Name} instead", loopVariable.Pos);
        if (!IsIdentifier("in")) throw Error("Expected `in` keyword following loop variable");
        ++_current;
        var iterable = ParseExpression();
        Expect(Tok.CloseStatement, "Expected closing statement token");
        var body = ParseUntil("{% endfor %}", "endfor", "else");
        var alternative = new List<Node>();
        if (IsStatement("else"))
        {
            _current += 2;
            Expect(Tok.CloseStatement, "Expected closing statement token");
            alternative = ParseUntil("{% endfor %}", "endfor");
        }
        return new ForNode(loopVariable, iterable, body, alternative) { Pos = pos };
    }

    Node ParseExpression()
    {
        if (!System.Runtime.CompilerServices.RuntimeHelpers.TryEnsureSufficientExecutionStack())
            throw Error("Expression nested too deeply");
        return ParseIfExpression();
    }

    Node ParseIfExpression()
    {
        var a = ParseLogicalOrExpression();
        if (IsIdentifier("if"))
        {
            ++_current;
            var test = ParseLogicalOrExpression();
            if (IsIdentifier("else"))
            {
                ++_current;
                var falseExpr = ParseIfExpression();
                return new Ternary(test, a, falseExpr) { Pos = a.Pos };
            }
            return new SelectExpr(a, test) { Pos = a.Pos };
        }
        return a;
    }

    Node ParseLogicalOrExpression()
    {
        var left = ParseLogicalAndExpression();
        while (IsIdentifier("or"))
        {
            ++_current;
            left = new BinaryExpr("or", left, ParseLogicalAndExpression()) { Pos = left.Pos };
        }
        return left;
    }

    Node ParseLogicalAndExpression()
    {
        var left = ParseLogicalNegationExpression();
        while (IsIdentifier("and"))
        {
            ++_current;
            left = new BinaryExpr("and", left, ParseLogicalNegationExpression()) { Pos = left.Pos };
        }
        return left;
    }

    Node ParseLogicalNegationExpression()
    {
        Node? right = null;
        while (IsIdentifier("not"))
        {
            int pos = Current.Pos;
            ++_current;
            var arg = ParseLogicalNegationExpression();
            right = new UnaryExpr("not", arg) { Pos = pos };
        }
        return right ?? ParseComparisonExpression();
    }

    Node ParseComparisonExpression()
    {
        var left = ParseAdditiveExpression();
        while (true)
        {
            string op;
            if (IsIdentifier("not", "in")) { op = "not in"; _current += 2; }
            else if (IsIdentifier("in")) { op = "in"; _current++; }
            else if (Is(Tok.ComparisonBinaryOperator)) op = _tokens[_current++].Value;
            else break;
            left = new BinaryExpr(op, left, ParseAdditiveExpression()) { Pos = left.Pos };
        }
        return left;
    }

    Node ParseAdditiveExpression()
    {
        var left = ParseMultiplicativeExpression();
        while (Is(Tok.AdditiveBinaryOperator))
        {
            var op = _tokens[_current++].Value;
            left = new BinaryExpr(op, left, ParseMultiplicativeExpression()) { Pos = left.Pos };
        }
        return left;
    }

    Node ParseCallMemberExpression()
    {
        var member = ParseMemberExpression(ParsePrimaryExpression());
        return Is(Tok.OpenParen) ? ParseCallExpression(member) : member;
    }

    Node ParseCallExpression(Node callee)
    {
        Node expression = new CallExpr(callee, ParseArgs(parameters: false)) { Pos = callee.Pos };
        expression = ParseMemberExpression(expression);
        if (Is(Tok.OpenParen)) expression = ParseCallExpression(expression);
        return expression;
    }

    List<Node> ParseArgs(bool parameters)
    {
        Expect(Tok.OpenParen, "Expected opening parenthesis for arguments list");
        var args = ParseArgumentsList(parameters);
        Expect(Tok.CloseParen, "Expected closing parenthesis for arguments list");
        return args;
    }

    List<Node> ParseArgumentsList(bool parameters)
    {
        var args = new List<Node>();
        var names = new HashSet<string>();
        bool sawKeyword = false, sawSpread = false;
        while (!Is(Tok.CloseParen))
        {
            if (Peek() is null) throw Error("Unexpected end of template: expected )");
            bool isKeywordSpread = Is(Tok.ExponentiationBinaryOperator);
            bool isPositionalSpread = Is(Tok.MultiplicativeBinaryOperator) && Current.Value == "*";
            if (parameters && (isKeywordSpread || isPositionalSpread))
                throw Error("Argument unpacking is not allowed in parameter declarations");
            if (isKeywordSpread)
            {
                int pos = Current.Pos;
                ++_current;
                args.Add(new KeywordSpreadExpr(ParseExpression()) { Pos = pos });
                if (Is(Tok.Comma)) ++_current;
                if (!Is(Tok.CloseParen)) throw Error("Expected closing parenthesis: `**` must be applied to the final argument");
                break;
            }
            Node argument;
            if (isPositionalSpread)
            {
                if (sawSpread) throw Error("Only one `*` argument unpacking is allowed");
                sawSpread = true;
                int pos = Current.Pos;
                ++_current;
                argument = new SpreadExpr(ParseExpression()) { Pos = pos };
            }
            else
            {
                argument = ParseExpression();
                if (Is(Tok.Equals))
                {
                    ++_current;
                    if (argument is not Identifier key)
                        throw Error(parameters ? "Expected identifier for parameter declaration" : "Expected identifier for keyword argument", argument.Pos);
                    argument = new KeywordArg(key, ParseExpression()) { Pos = argument.Pos };
                }
                if (parameters)
                {
                    var name = argument switch
                    {
                        Identifier i => i.Name,
                        KeywordArg k => k.Key.Name,
                        _ => throw Error("Expected identifier for parameter declaration", argument.Pos),
                    };
                    if (!names.Add(name)) throw Error($"Duplicate parameter name: {name}", argument.Pos);
                }
                if (argument is KeywordArg) sawKeyword = true;
                else if (sawKeyword)
                    throw Error(parameters ? "Non-default argument follows default argument" : "Positional arguments must come before keyword arguments", argument.Pos);
                else if (sawSpread) throw Error("Positional arguments must not follow `*` argument unpacking", argument.Pos);
            }
            args.Add(argument);
            if (Is(Tok.Comma)) ++_current;
        }
        return args;
    }

    Node ParseMemberExpressionArgumentsList()
    {
        int pos = PosHere;
        var slices = new List<Node?>();
        bool isSlice = false;
        while (!Is(Tok.CloseSquareBracket))
        {
            if (Peek() is null) throw Error("Unexpected end of template: expected ]");
            if (Is(Tok.Colon))
            {
                slices.Add(null);
                ++_current;
                isSlice = true;
            }
            else
            {
                slices.Add(ParseExpression());
                if (Is(Tok.Colon)) { ++_current; isSlice = true; }
            }
        }
        if (slices.Count == 0) throw Error("Expected at least one argument for member/slice expression");
        if (isSlice)
        {
            if (slices.Count > 3) throw Error("Expected 0-3 arguments for slice expression");
            return new SliceExpr(slices[0], slices.ElementAtOrDefault(1), slices.ElementAtOrDefault(2)) { Pos = pos };
        }
        return slices[0]!;
    }

    Node ParseMemberExpression(Node obj)
    {
        while (Is(Tok.Dot) || Is(Tok.OpenSquareBracket))
        {
            var op = _tokens[_current++];
            bool computed = op.Type == Tok.OpenSquareBracket;
            Node property;
            if (computed)
            {
                property = ParseMemberExpressionArgumentsList();
                Expect(Tok.CloseSquareBracket, "Expected closing square bracket");
            }
            else
            {
                property = ParsePrimaryExpression();
                if (property is not (Identifier or IntLiteral))
                    throw Error("Expected identifier or integer following dot operator", property.Pos);
            }
            obj = new MemberExpr(obj, property, computed) { Pos = obj.Pos };
        }
        return obj;
    }

    Node ParseMultiplicativeExpression()
    {
        var left = ParsePowerExpression();
        while (Is(Tok.MultiplicativeBinaryOperator))
        {
            var op = _tokens[_current++].Value;
            left = new BinaryExpr(op, left, ParsePowerExpression()) { Pos = left.Pos };
        }
        return left;
    }

    Node ParsePowerExpression()
    {
        var left = ParseTestExpression();
        while (Is(Tok.ExponentiationBinaryOperator))
        {
            _current++;
            left = new BinaryExpr("**", left, ParseTestExpression()) { Pos = left.Pos };
        }
        return left;
    }

    Node ParseTestExpression()
    {
        var operand = ParseFilterExpression();
        while (IsIdentifier("is"))
        {
            ++_current;
            bool negate = IsIdentifier("not");
            if (negate) ++_current;
            var filter = ParsePrimaryExpression();
            if (filter is not Identifier test) throw Error("Expected identifier for the test", filter.Pos);
            operand = new TestExpr(operand, negate, test) { Pos = operand.Pos };
        }
        return operand;
    }

    Node ParseFilterExpression()
    {
        var operand = ParseUnarySignExpression();
        while (Is(Tok.Pipe))
        {
            ++_current;
            var filter = ParsePrimaryExpression();
            if (filter is not Identifier) throw Error("Expected identifier for the filter", filter.Pos);
            if (Is(Tok.OpenParen)) filter = ParseCallExpression(filter);
            operand = new FilterExpr(operand, filter) { Pos = operand.Pos };
        }
        return operand;
    }

    Node ParseUnarySignExpression()
    {
        if (Peek() is { Type: Tok.UnaryOperator or Tok.AdditiveBinaryOperator, Value: "-" or "+" } token)
        {
            _current++;
            return new UnaryExpr(token.Value, ParseUnarySignExpression()) { Pos = token.Pos };
        }
        return ParseCallMemberExpression();
    }

    Node ParsePrimaryExpression()
    {
        var token = Peek() ?? throw Error("Unexpected end of template: expected an expression");
        _current++;
        switch (token.Type)
        {
            case Tok.NumericLiteral:
            {
                var num = double.Parse(token.Value, NumberStyles.Float, CultureInfo.InvariantCulture);
                return token.Value.Contains('.') ? new FloatLiteral(num) { Pos = token.Pos } : new IntLiteral(num) { Pos = token.Pos };
            }
            case Tok.StringLiteral:
            {
                var value = token.Value;
                while (Is(Tok.StringLiteral)) value += _tokens[_current++].Value;
                return new StrLiteral(value) { Pos = token.Pos };
            }
            case Tok.Identifier:
                return new Identifier(token.Value) { Pos = token.Pos };
            case Tok.OpenParen:
            {
                var expression = ParseExpressionSequence();
                Expect(Tok.CloseParen, "Expected closing parenthesis");
                return expression;
            }
            case Tok.OpenSquareBracket:
            {
                var values = new List<Node>();
                while (!Is(Tok.CloseSquareBracket))
                {
                    if (Peek() is null) throw Error("Unexpected end of template: expected ]");
                    values.Add(ParseExpression());
                    if (Is(Tok.Comma)) ++_current;
                }
                ++_current;
                return new ArrayLiteral(values) { Pos = token.Pos };
            }
            case Tok.OpenCurlyBracket:
            {
                var entries = new List<(Node, Node)>();
                while (!Is(Tok.CloseCurlyBracket))
                {
                    if (Peek() is null) throw Error("Unexpected end of template: expected }");
                    var key = ParseExpression();
                    Expect(Tok.Colon, "Expected colon between key and value in object literal");
                    entries.Add((key, ParseExpression()));
                    if (Is(Tok.Comma)) ++_current;
                }
                ++_current;
                return new ObjectLiteral(entries) { Pos = token.Pos };
            }
            default:
                throw Error($"Unexpected token: {token.Type}", token.Pos);
        }
    }
}
